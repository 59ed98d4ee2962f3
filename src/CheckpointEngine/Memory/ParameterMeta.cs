using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Memory;

/// <summary>
/// Where one tensor lies in a host buffer: <see cref="Offset"/> from the buffer start, its exact
/// <see cref="ByteLength"/>; <see cref="AlignedSize"/> is the room it takes when packed.
/// </summary>
public sealed record ParameterMeta(string Name, DType DType, ImmutableArray<long> Shape, long Offset, long ByteLength)
{
    /// <summary>CRC-32 of the tensor's bytes (see <see cref="Worker.TensorChecksum"/>), computed at registration; null in metas written without one.</summary>
    public uint? Crc32 { get; init; }

    public long AlignedSize => BufferLayout.Align(ByteLength);
}
