using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Simulation.Models;

/// <summary>One tensor of a checkpoint as the simulator sees it: no data, only what sizes and plans depend on.</summary>
public readonly record struct TensorSpec(string Name, DType DType, ImmutableArray<long> Shape, long ByteLength)
{
    public static TensorSpec Of(string name, DType dtype, params long[] shape) =>
        new(name, dtype, [.. shape], dtype.ByteLength(shape));

    public long ElementCount => DTypes.TryElementCount(Shape.AsSpan(), out var n) ? n : 0;

    /// <summary>
    /// Whether a tensor-parallel engine splits this tensor over its ranks (each rank keeps one slice):
    /// matrices are split, vectors (norms, biases, expert-score biases) and the MoE router are replicated.
    /// The rule of thumb of vLLM and SGLang for these architectures; the shard-aware what-if uses it.
    /// </summary>
    public bool IsTensorParallel => IsSplit(Name, Shape.Length);

    public static bool IsSplit(string name, int dimensions) => dimensions >= 2 && !name.EndsWith(".mlp.gate.weight", StringComparison.Ordinal);
}
