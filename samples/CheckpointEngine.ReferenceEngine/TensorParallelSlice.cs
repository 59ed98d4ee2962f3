using CheckpointEngine.Worker;

namespace CheckpointEngine.ReferenceEngine;

/// <summary>
/// The part of a tensor that tensor-parallel shard <c>rank</c> of <c>size</c> keeps, as a strided
/// copy: <see cref="Chunks"/> pieces of <see cref="ChunkBytes"/>, the first at <see cref="SourceOffset"/>
/// and each <see cref="SourceStride"/> bytes after the previous one, packed together in the shard.
/// Column-parallel projections (q/k/v/gate/up) split rows; row-parallel ones (o/down) split columns,
/// as vLLM's linear layers do. Anything else, and any split that does not divide evenly or whose
/// elements are smaller than a byte, is kept whole.
/// </summary>
internal readonly record struct TensorParallelSlice(long[] Shape, long SourceOffset, long Chunks, long ChunkBytes, long SourceStride)
{
    private static readonly string[] RowSplit = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight"];
    private static readonly string[] ColumnSplit = ["o_proj.weight", "down_proj.weight"];

    public long ByteLength => Chunks * ChunkBytes;

    public static TensorParallelSlice Whole(ReceivedTensor info) => new([.. info.Shape], 0, 1, info.Length, 0);

    public static TensorParallelSlice For(ReceivedTensor info, int rank, int size, bool shardByTp)
    {
        if (!shardByTp || size <= 1 || info.Shape.Length != 2 || info.DType.BitSize() % 8 != 0)
        {
            return Whole(info);
        }
        long rows = info.Shape[0], columns = info.Shape[1], element = info.DType.BitSize() / 8;
        if (EndsWithAny(info.Name, RowSplit) && rows % size == 0)
        {
            var part = rows / size;
            return new([part, columns], rank * part * columns * element, 1, part * columns * element, 0);
        }
        if (EndsWithAny(info.Name, ColumnSplit) && columns % size == 0)
        {
            var part = columns / size;
            return new([rows, part], rank * part * element, rows, part * element, columns * element);
        }
        return Whole(info);
    }

    /// <summary>Copies the slice out of the whole tensor at <paramref name="source"/> into <paramref name="destination"/> (packed).</summary>
    public unsafe void CopyTo(byte* source, byte* destination)
    {
        for (long i = 0; i < Chunks; i++)
        {
            Buffer.MemoryCopy(source + SourceOffset + i * SourceStride, destination + i * ChunkBytes, ChunkBytes, ChunkBytes);
        }
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
