using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Memory;

/// <summary>
/// Packs tensors into host buffers (pure): sorted by name, each at a 256-byte aligned offset, a new
/// buffer whenever the next tensor would pass the buffer limit (4 GiB, or the largest tensor if
/// that is bigger). Two checkpoints of the same names, dtypes and shapes get the same layout, which
/// is what lets a pool hand the second one the first one's buffers.
/// </summary>
public static class BufferLayout
{
    public const int TensorAlignment = 256;
    public const long DefaultMaxBufferSize = 4L << 30;

    public static long Align(long size) => (size + TensorAlignment - 1) / TensorAlignment * TensorAlignment;

    /// <summary>One buffer of the plan: its size and the tensors in it.</summary>
    public sealed record Buffer(long Size, IReadOnlyList<ParameterMeta> Metas);

    public static IReadOnlyList<Buffer> Pack(IEnumerable<(string Name, DType DType, ImmutableArray<long> Shape, long ByteLength)> tensors,
        long maxBufferSize = DefaultMaxBufferSize)
    {
        var sorted = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        if (sorted.Count == 0)
        {
            return [];
        }
        var limit = Math.Max(maxBufferSize, sorted.Max(t => Align(t.ByteLength)));
        var buffers = new List<Buffer>();
        var metas = new List<ParameterMeta>();
        long offset = 0;
        foreach (var t in sorted)
        {
            var aligned = Align(t.ByteLength);
            if (offset + aligned > limit && metas.Count > 0)
            {
                buffers.Add(new Buffer(offset, metas));
                metas = [];
                offset = 0;
            }
            metas.Add(new ParameterMeta(t.Name, t.DType, t.Shape, offset, t.ByteLength));
            offset += aligned;
        }
        buffers.Add(new Buffer(offset, metas));
        return buffers;
    }
}
