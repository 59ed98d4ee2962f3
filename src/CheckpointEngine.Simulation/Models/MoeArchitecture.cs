namespace CheckpointEngine.Simulation.Models;

/// <summary>
/// The config.json values of a mixture-of-experts decoder that decide its checkpoint's tensors. Field
/// names follow the Hugging Face configs they come from.
/// </summary>
/// <param name="Layers">num_hidden_layers (the main model).</param>
/// <param name="MtpLayers">num_nextn_predict_layers: extra multi-token-prediction layers stored after the main ones.</param>
/// <param name="DenseLayers">first_k_dense_replace: leading layers with a dense MLP instead of experts.</param>
/// <param name="Fp8BlockScales">Linear weights stored as F8_E4M3 with an F32 <c>weight_scale_inv</c> per 128×128 block.</param>
/// <param name="ExpertScoreBias">The router carries an F32 <c>e_score_correction_bias</c> (DeepSeek-style routing).</param>
/// <param name="MtpHasHead">The MTP layer stores its own embedding and output head (DeepSeek-V3).</param>
public sealed record MoeArchitecture(
    AttentionKind Attention,
    int HiddenSize,
    int Layers,
    int MtpLayers,
    int DenseLayers,
    int IntermediateSize,
    int MoeIntermediateSize,
    int RoutedExperts,
    int SharedExperts,
    int VocabSize,
    int Heads,
    int KeyValueHeads = 0,
    int HeadDim = 0,
    bool AttentionBias = false,
    bool QkNorm = false,
    int QLoraRank = 0,
    int KvLoraRank = 0,
    int QkNopeHeadDim = 0,
    int QkRopeHeadDim = 0,
    int VHeadDim = 0,
    bool Fp8BlockScales = false,
    bool ExpertScoreBias = false,
    bool MtpHasHead = false)
{
    public const int ScaleBlock = 128;

    /// <summary>
    /// A smaller model of the same family for demos and benchmarks: at most <paramref name="layers"/> layers
    /// (dense ones first, as in the original) and <paramref name="experts"/> experts, every width divided by
    /// <paramref name="shrink"/> (kept a multiple of the FP8 block, so block scales keep their real shape rule).
    /// </summary>
    public MoeArchitecture Scaled(int shrink, int layers, int experts)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(shrink, 1);
        int W(int n) => n == 0 ? 0 : Math.Max(ScaleBlock, n / shrink / ScaleBlock * ScaleBlock);
        int H(int n) => n == 0 ? 0 : Math.Max(1, n / shrink);
        var kept = Math.Max(1, Math.Min(Layers, layers));
        return this with
        {
            HiddenSize = W(HiddenSize),
            Layers = kept,
            MtpLayers = Math.Min(MtpLayers, 1),
            DenseLayers = Math.Min(DenseLayers, kept > 1 ? 1 : kept),
            IntermediateSize = W(IntermediateSize),
            MoeIntermediateSize = W(MoeIntermediateSize),
            RoutedExperts = Math.Min(RoutedExperts, experts),
            VocabSize = W(VocabSize),
            Heads = H(Heads),
            KeyValueHeads = H(KeyValueHeads),
            QLoraRank = W(QLoraRank),
            KvLoraRank = W(KvLoraRank),
        };
    }
}
