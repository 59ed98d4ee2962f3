using CheckpointEngine.Memory;
using CheckpointEngine.Worker;

namespace CheckpointEngine.ReferenceEngine;

/// <summary>
/// The part of a tensor that tensor-parallel shard <c>rank</c> of <c>size</c> keeps, as a strided
/// copy: <see cref="Chunks"/> pieces of <see cref="ChunkBytes"/>, the first at <see cref="SourceOffset"/>
/// and each <see cref="SourceStride"/> bytes after the previous one, packed together in the shard.
/// Column-parallel projections (q/k/v/gate/up) split rows; row-parallel ones (o/down) split columns,
/// as vLLM's linear layers do, and their FP8 block scales with them. Anything else, and any split that does not divide evenly or whose
/// elements are smaller than a byte, is kept whole.
/// </summary>
internal readonly record struct TensorParallelSlice(long[] Shape, long SourceOffset, long Chunks, long ChunkBytes, long SourceStride)
{
    // FP8 block scales (weight_scale_inv, one per 128 × 128 block) go with their weight's split, as vLLM shards them.
    private static readonly string[] RowSplit = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight",
        "q_proj.weight_scale_inv", "k_proj.weight_scale_inv", "v_proj.weight_scale_inv", "gate_proj.weight_scale_inv", "up_proj.weight_scale_inv"];

    private static readonly string[] ColumnSplit = ["o_proj.weight", "down_proj.weight", "o_proj.weight_scale_inv", "down_proj.weight_scale_inv"];

    public long ByteLength => Chunks * ChunkBytes;

    public static TensorParallelSlice Whole(ReceivedTensor info) => new([.. info.Shape], 0, 1, info.Length, 0);

    public static TensorParallelSlice For(ReceivedTensor info, int rank, int size, bool shardByTp) =>
        For(info.Name, info.DType, [.. info.Shape], info.Length, rank, size, shardByTp);

    /// <summary>The slice of a tensor of <paramref name="shape"/> (<paramref name="length"/> bytes in all) that shard <paramref name="rank"/> keeps.</summary>
    public static TensorParallelSlice For(string name, DType dtype, long[] shape, long length, int rank, int size, bool shardByTp)
    {
        long rows = shape.Length == 2 ? shape[0] : 0, columns = shape.Length == 2 ? shape[1] : 0, element = dtype.BitSize() / 8;
        return Split(name, dtype, shape, size, shardByTp) switch
        {
            0 => new([rows / size, columns], rank * (rows / size) * columns * element, 1, rows / size * columns * element, 0),
            1 => new([rows, columns / size], rank * (columns / size) * element, rows, columns / size * element, columns * element),
            _ => new(shape, 0, 1, length, 0),
        };
    }

    /// <summary>What shard <paramref name="rank"/> keeps of a tensor, as it declares it to the parameter server (the same split as <see cref="For"/>).</summary>
    public static TensorWant Want(string name, DType dtype, IReadOnlyList<long> shape, int rank, int size, bool shardByTp) =>
        Split(name, dtype, shape, size, shardByTp) is { } dim
            ? TensorWant.Along(dim, new SliceRange(rank * (shape[dim] / size), shape[dim] / size))
            : TensorWant.Whole;

    /// <summary>The dimension a tensor is split along across <paramref name="size"/> shards, or null when every shard keeps it whole.</summary>
    private static int? Split(string name, DType dtype, IReadOnlyList<long> shape, int size, bool shardByTp)
    {
        if (!shardByTp || size <= 1 || shape.Count != 2 || dtype.BitSize() % 8 != 0)
        {
            return null;
        }
        if (EndsWithAny(name, RowSplit) && shape[0] % size == 0)
        {
            return 0;
        }
        return EndsWithAny(name, ColumnSplit) && shape[1] % size == 0 ? 1 : null;
    }

    /// <summary>Copies the slice out of the whole tensor at <paramref name="source"/> into <paramref name="destination"/> (packed).</summary>
    public unsafe void CopyTo(byte* source, byte* destination)
    {
        StreamingCopy.CopyRows(source + SourceOffset, SourceStride, destination, ChunkBytes, ChunkBytes, Chunks);
    }

    private static bool EndsWithAny(string name, string[] suffixes)
    {
        foreach (var suffix in suffixes)
        {
            if (name.EndsWith(suffix, StringComparison.Ordinal) && (name.Length == suffix.Length || name[^(suffix.Length + 1)] == '.'))
            {
                return true;
            }
        }
        return false;
    }
}
