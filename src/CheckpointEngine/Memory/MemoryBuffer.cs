namespace CheckpointEngine.Memory;

/// <summary>How a registered buffer's memory was obtained, which decides how it is released.</summary>
public enum MemoryBufferKind
{
    /// <summary>Allocated for this checkpoint; freed on unregister.</summary>
    Owned,

    /// <summary>Rented from the pool; returned to it on unregister for the next checkpoint of the same layout.</summary>
    Pooled,

    /// <summary>The data section of a tmpfs file, mapped in place; unmapped on unregister.</summary>
    InPlace,
}

/// <summary>
/// A contiguous region of host memory holding packed tensors of a registered checkpoint. The memory
/// is owned by the checkpoint registration; this object only describes it. <see cref="Segment"/>: the shared-memory segment it
/// starts, where it was registered into shared memory (<see cref="CheckpointRegistry.SharedMemory"/>), for peers and workers on this host to map.
/// </summary>
public sealed unsafe class MemoryBuffer(nint pointer, long size, IReadOnlyList<ParameterMeta> metas, MemoryBufferKind kind, SharedMemorySegment? segment = null)
{
    public SharedMemorySegment? Segment { get; } = segment;

    public nint Address { get; } = pointer;

    public byte* Pointer => (byte*)Address;

    public long Size { get; } = size;

    /// <summary>Tensors in the buffer, in offset order.</summary>
    public IReadOnlyList<ParameterMeta> Metas { get; } = metas;

    public MemoryBufferKind Kind { get; } = kind;

    public ReadOnlySpan<byte> Bytes(ParameterMeta meta)
    {
        if (meta.Offset < 0 || meta.ByteLength < 0 || meta.Offset > Size - meta.ByteLength)
        {
            throw new ArgumentOutOfRangeException(nameof(meta), $"tensor '{meta.Name}' at [{meta.Offset}, +{meta.ByteLength}) lies outside this {Size}-byte buffer");
        }
        return meta.ByteLength <= int.MaxValue
            ? new ReadOnlySpan<byte>(Pointer + meta.Offset, (int)meta.ByteLength)
            : throw new InvalidOperationException($"tensor '{meta.Name}' is {meta.ByteLength} bytes, too large for one span");
    }
}
