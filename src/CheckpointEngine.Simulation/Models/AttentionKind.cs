namespace CheckpointEngine.Simulation.Models;

/// <summary>How a preset's attention is laid out in its checkpoint.</summary>
public enum AttentionKind
{
    /// <summary>Grouped-query attention: q/k/v/o projections (GLM-4.5, Qwen3).</summary>
    GroupedQuery,

    /// <summary>Multi-head latent attention: low-rank q and kv projections (DeepSeek-V3, Kimi-K2).</summary>
    MultiHeadLatent,
}
