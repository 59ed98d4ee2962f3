namespace CheckpointEngine.Simulation.Models;

/// <summary>
/// The models of the original's published benchmark, from their public config.json files. Totals are
/// checked by a test against what their authors publish.
/// </summary>
public static class ModelPresets
{
    /// <summary>zai-org/GLM-4.5-Air: 46 layers (1 dense), 128 routed + 1 shared experts, GQA 96/8 heads with q/k/v bias, one MTP layer; BF16.</summary>
    public static readonly ModelPreset Glm45Air = new("glm-4.5-air", "GLM-4.5-Air (BF16)",
        new MoeArchitecture(AttentionKind.GroupedQuery, HiddenSize: 4096, Layers: 46, MtpLayers: 1, DenseLayers: 1,
            IntermediateSize: 10944, MoeIntermediateSize: 1408, RoutedExperts: 128, SharedExperts: 1, VocabSize: 151552,
            Heads: 96, KeyValueHeads: 8, HeadDim: 128, AttentionBias: true, ExpertScoreBias: true),
        106e9, "zai-org/GLM-4.5-Air config.json; 106B total parameters per the GLM-4.5 model card (main model, MTP layer excluded)");

    /// <summary>Qwen/Qwen3-235B-A22B (and -Instruct-2507, same tensors): 94 layers, 128 experts, GQA 64/4 heads with q/k norms; BF16.</summary>
    public static readonly ModelPreset Qwen3 = new("qwen3-235b-a22b", "Qwen3-235B-A22B (BF16)",
        new MoeArchitecture(AttentionKind.GroupedQuery, HiddenSize: 4096, Layers: 94, MtpLayers: 0, DenseLayers: 0,
            IntermediateSize: 12288, MoeIntermediateSize: 1536, RoutedExperts: 128, SharedExperts: 0, VocabSize: 151936,
            Heads: 64, KeyValueHeads: 4, HeadDim: 128, QkNorm: true),
        235e9, "Qwen/Qwen3-235B-A22B config.json; 235B total parameters per its model card");

    /// <summary>deepseek-ai/DeepSeek-V3.1: 61 layers (3 dense), 256 routed + 1 shared experts, MLA, one MTP layer; FP8 E4M3 with 128×128 F32 block scales.</summary>
    public static readonly ModelPreset DeepSeekV31 = new("deepseek-v3.1", "DeepSeek-V3.1 (FP8, block scales)",
        new MoeArchitecture(AttentionKind.MultiHeadLatent, HiddenSize: 7168, Layers: 61, MtpLayers: 1, DenseLayers: 3,
            IntermediateSize: 18432, MoeIntermediateSize: 2048, RoutedExperts: 256, SharedExperts: 1, VocabSize: 129280,
            Heads: 128, QLoraRank: 1536, KvLoraRank: 512, QkNopeHeadDim: 128, QkRopeHeadDim: 64, VHeadDim: 128,
            Fp8BlockScales: true, ExpertScoreBias: true, MtpHasHead: true),
        671e9, "deepseek-ai/DeepSeek-V3.1 config.json; the DeepSeek-V3 model card: 685B on Hugging Face = 671B main model + 14B MTP module");

    /// <summary>moonshotai/Kimi-K2-Instruct: DeepSeek-V3 architecture with 384 experts, 64 heads, 1 dense layer, no MTP layer; FP8 with block scales.</summary>
    public static readonly ModelPreset KimiK2 = new("kimi-k2", "Kimi-K2-Instruct (FP8, block scales)",
        new MoeArchitecture(AttentionKind.MultiHeadLatent, HiddenSize: 7168, Layers: 61, MtpLayers: 0, DenseLayers: 1,
            IntermediateSize: 18432, MoeIntermediateSize: 2048, RoutedExperts: 384, SharedExperts: 1, VocabSize: 163840,
            Heads: 64, QLoraRank: 1536, KvLoraRank: 512, QkNopeHeadDim: 128, QkRopeHeadDim: 64, VHeadDim: 128,
            Fp8BlockScales: true, ExpertScoreBias: true),
        1.04e12, "moonshotai/Kimi-K2-Instruct config.json; 1.04T total parameters per the Kimi K2 technical report (the model card rounds to 1T)");

    public static IReadOnlyList<ModelPreset> All { get; } = [Glm45Air, Qwen3, DeepSeekV31, KimiK2];

    /// <summary>A preset by name, case-insensitively; a few spellings of each are accepted.</summary>
    public static ModelPreset? Find(string name)
    {
        var key = new string([.. name.ToLowerInvariant().Where(char.IsLetterOrDigit)]);
        return All.FirstOrDefault(p => new string([.. p.Name.Where(char.IsLetterOrDigit)]) == key)
            ?? key switch
            {
                "glm45air" or "zaiorgglm45air" => Glm45Air,
                "qwen3235b" or "qwen3235ba22binstruct2507" or "qwenqwen3235ba22b" => Qwen3,
                "deepseekv31" or "deepseekv3" or "deepseekaideepseekv31" => DeepSeekV31,
                "kimik2instruct" or "moonshotaikimik2instruct" => KimiK2,
                _ => null,
            };
    }
}
