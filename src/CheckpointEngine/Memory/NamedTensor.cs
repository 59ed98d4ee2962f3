using System.Buffers;
using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Memory;

/// <summary>
/// A tensor handed over in memory (the trainer path): name, dtype, shape and bytes the caller owns.
/// The bytes are copied during registration and not referenced afterwards.
/// </summary>
public sealed unsafe class NamedTensor
{
    private readonly ReadOnlyMemory<byte> _memory;
    private readonly nint _pointer;

    private NamedTensor(string name, DType dtype, ImmutableArray<long> shape, long byteLength, ReadOnlyMemory<byte> memory, nint pointer)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (!dtype.TryByteLength(shape.AsSpan(), out var expected, out var why))
        {
            throw new ArgumentException($"tensor '{name}': {why}", nameof(shape));
        }
        if (expected != byteLength)
        {
            throw new ArgumentException($"tensor '{name}': {byteLength} bytes given, dtype {dtype} and shape [{string.Join(", ", shape)}] need {expected}", nameof(shape));
        }
        Name = name;
        DType = dtype;
        Shape = shape;
        ByteLength = byteLength;
        _memory = memory;
        _pointer = pointer;
    }

    public NamedTensor(string name, DType dtype, long[] shape, ReadOnlyMemory<byte> data)
        : this(name, dtype, [.. shape], data.Length, data, 0)
    {
    }

    /// <summary>A tensor in native memory (e.g. a trainer's own allocation); no size limit.</summary>
    public static NamedTensor FromPointer(string name, DType dtype, long[] shape, nint pointer, long byteLength)
    {
        if (pointer == 0 && byteLength > 0)
        {
            throw new ArgumentException($"tensor '{name}': null pointer", nameof(pointer));
        }
        return new NamedTensor(name, dtype, [.. shape], byteLength, default, pointer);
    }

    public string Name { get; }

    public DType DType { get; }

    public ImmutableArray<long> Shape { get; }

    public long ByteLength { get; }

    /// <summary>Pins the bytes for the duration of a copy.</summary>
    internal MemoryHandle Pin() => _pointer != 0 ? new MemoryHandle((void*)_pointer) : _memory.Pin();
}
