using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Simulation.Models;

/// <summary>
/// Lists the tensors a published checkpoint of a <see cref="MoeArchitecture"/> holds, under the names
/// its Hugging Face checkpoint uses (<c>model.layers.{i}.mlp.experts.{e}.down_proj.weight</c>, ...).
/// </summary>
public static class InventoryBuilder
{
    public static ModelInventory Build(string name, MoeArchitecture a)
    {
        var tensors = new List<TensorSpec>();
        const DType norm = DType.BF16; // Norms stay BF16 in the FP8 checkpoints too.
        void Add(string n, DType d, params long[] shape) => tensors.Add(TensorSpec.Of(n, d, shape));

        // A linear layer [out, in]: BF16, or F8_E4M3 plus its 128×128 block scales.
        void Linear(string prefix, long output, long input, bool quantized = true)
        {
            if (a.Fp8BlockScales && quantized)
            {
                Add(prefix + ".weight", DType.F8_E4M3, output, input);
                Add(prefix + ".weight_scale_inv", DType.F32, Blocks(output), Blocks(input));
            }
            else
            {
                Add(prefix + ".weight", DType.BF16, output, input);
            }
        }

        void Mlp(string prefix, long width)
        {
            Linear(prefix + ".gate_proj", width, a.HiddenSize);
            Linear(prefix + ".up_proj", width, a.HiddenSize);
            Linear(prefix + ".down_proj", a.HiddenSize, width);
        }

        void Layer(int l)
        {
            var p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", norm, a.HiddenSize);
            Add(p + "post_attention_layernorm.weight", norm, a.HiddenSize);
            if (a.Attention == AttentionKind.GroupedQuery)
            {
                long q = (long)a.Heads * a.HeadDim, kv = (long)a.KeyValueHeads * a.HeadDim;
                foreach (var (proj, width) in new[] { ("q_proj", q), ("k_proj", kv), ("v_proj", kv) })
                {
                    Linear(p + "self_attn." + proj, width, a.HiddenSize);
                    if (a.AttentionBias)
                    {
                        Add(p + $"self_attn.{proj}.bias", DType.BF16, width);
                    }
                }
                Linear(p + "self_attn.o_proj", a.HiddenSize, q);
                if (a.QkNorm)
                {
                    Add(p + "self_attn.q_norm.weight", norm, a.HeadDim);
                    Add(p + "self_attn.k_norm.weight", norm, a.HeadDim);
                }
            }
            else
            {
                Linear(p + "self_attn.q_a_proj", a.QLoraRank, a.HiddenSize);
                Add(p + "self_attn.q_a_layernorm.weight", norm, a.QLoraRank);
                Linear(p + "self_attn.q_b_proj", (long)a.Heads * (a.QkNopeHeadDim + a.QkRopeHeadDim), a.QLoraRank);
                Linear(p + "self_attn.kv_a_proj_with_mqa", a.KvLoraRank + a.QkRopeHeadDim, a.HiddenSize);
                Add(p + "self_attn.kv_a_layernorm.weight", norm, a.KvLoraRank);
                Linear(p + "self_attn.kv_b_proj", (long)a.Heads * (a.QkNopeHeadDim + a.VHeadDim), a.KvLoraRank);
                Linear(p + "self_attn.o_proj", a.HiddenSize, (long)a.Heads * a.VHeadDim);
            }
            if (l < a.DenseLayers)
            {
                Mlp(p + "mlp", a.IntermediateSize);
                return;
            }
            Add(p + "mlp.gate.weight", DType.BF16, a.RoutedExperts, a.HiddenSize);
            if (a.ExpertScoreBias)
            {
                Add(p + "mlp.gate.e_score_correction_bias", DType.F32, a.RoutedExperts);
            }
            for (var e = 0; e < a.RoutedExperts; e++)
            {
                Mlp(p + $"mlp.experts.{e}", a.MoeIntermediateSize);
            }
            if (a.SharedExperts > 0)
            {
                Mlp(p + "mlp.shared_experts", (long)a.MoeIntermediateSize * a.SharedExperts);
            }
        }

        Add("model.embed_tokens.weight", DType.BF16, a.VocabSize, a.HiddenSize);
        Add("model.norm.weight", norm, a.HiddenSize);
        Add("lm_head.weight", DType.BF16, a.VocabSize, a.HiddenSize);
        for (var l = 0; l < a.Layers; l++)
        {
            Layer(l);
        }
        // Multi-token-prediction layers follow the main ones: a full layer plus the projection of [embedding; hidden].
        for (var l = a.Layers; l < a.Layers + a.MtpLayers; l++)
        {
            Layer(l);
            var p = $"model.layers.{l}.";
            Add(p + "enorm.weight", norm, a.HiddenSize);
            Add(p + "hnorm.weight", norm, a.HiddenSize);
            Add(p + "eh_proj.weight", DType.BF16, a.HiddenSize, 2L * a.HiddenSize);
            Add(p + "shared_head.norm.weight", norm, a.HiddenSize);
            if (a.MtpHasHead)
            {
                Add(p + "embed_tokens.weight", DType.BF16, a.VocabSize, a.HiddenSize);
                Add(p + "shared_head.head.weight", DType.BF16, a.VocabSize, a.HiddenSize);
            }
        }
        return new ModelInventory(name, tensors);
    }

    private static long Blocks(long n) => (n + MoeArchitecture.ScaleBlock - 1) / MoeArchitecture.ScaleBlock;
}
