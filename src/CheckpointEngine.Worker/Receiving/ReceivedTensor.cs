using System.Collections.Immutable;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>
/// One tensor of a bucket where it lies in the mapped update buffer, without a copy: valid only during
/// the <see cref="BucketHandler"/> call. <see cref="Offset"/> is its place in the buffer. A part handed in place
/// (<see cref="IsPacked"/> false, only to a receiver that takes strided views) lies in <see cref="Rows"/> rows of
/// <see cref="RowBytes"/>, <see cref="Pitch"/> bytes apart, inside its whole tensor: copy it with <see cref="CopyTo(byte*)"/> or read <see cref="Row"/>.
/// </summary>
public readonly unsafe struct ReceivedTensor(string name, DType dtype, ImmutableArray<long> shape, long offset, long length, byte* pointer, nint deviceContext,
    TensorPart? part = null, long rows = 1, long pitch = 0)
{
    /// <summary>
    /// Null: the whole tensor. Otherwise only the slices this worker declared it keeps (see <see cref="WorkerWants"/>),
    /// packed along <see cref="TensorPart.Dim"/> (or in place, see <see cref="IsPacked"/>); <see cref="Shape"/> is the part's shape and <see cref="TensorPart.FullShape"/> the tensor's.
    /// </summary>
    public TensorPart? Part { get; } = part;

    public string Name { get; } = name;

    public DType DType { get; } = dtype;

    public ImmutableArray<long> Shape { get; } = shape;

    public long Offset { get; } = offset;

    /// <summary>The tensor's (or part's) bytes: <see cref="Rows"/> × <see cref="RowBytes"/>.</summary>
    public long Length { get; } = length;

    /// <summary>The first byte: a host pointer, or a device pointer when <see cref="OnDevice"/>.</summary>
    public byte* Pointer { get; } = pointer;

    /// <summary>How many runs of <see cref="RowBytes"/> the bytes lie in: 1 for a packed tensor.</summary>
    public long Rows { get; } = rows;

    /// <summary>The bytes of one row (all of them for a packed tensor).</summary>
    public long RowBytes => Rows == 0 ? 0 : Length / Rows;

    /// <summary>From the start of one row to the next: the whole tensor's row stride for a part in place, <see cref="RowBytes"/> when packed.</summary>
    public long Pitch { get; } = pitch == 0 ? (rows == 0 ? 0 : length / rows) : pitch;

    /// <summary>The bytes lie one after the other from <see cref="Pointer"/> (always, unless this receiver takes strided views).</summary>
    public bool IsPacked => Rows <= 1 || Pitch == RowBytes;

    /// <summary>
    /// The bytes are in GPU memory (a CUDA IPC mapping): <see cref="Pointer"/> is a device pointer for CUDA
    /// calls and kernels in <see cref="DeviceContext"/>, not for the CPU; copy out with <see cref="CopyTo(byte*)"/>.
    /// </summary>
    public bool OnDevice => DeviceContext != 0;

    /// <summary>The CUDA context the device pointer belongs to (the device's primary context), or 0 for host memory.</summary>
    public nint DeviceContext { get; } = deviceContext;

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>
    /// Copies the bytes, packed, to host memory at <paramref name="destination"/> (<see cref="Length"/> bytes): row by row for a part
    /// in place, a device-to-host copy when <see cref="OnDevice"/>.
    /// </summary>
    public void CopyTo(byte* destination)
    {
        if (OnDevice)
        {
            var cuda = CudaDriver.Instance;
            cuda.SetCurrent(DeviceContext); // Contexts are per thread; handlers run on any pool thread.
            cuda.CopyDeviceToHost((nint)destination, (ulong)Pointer, Length);
        }
        else if (IsPacked)
        {
            StreamingCopy.Copy(Pointer, destination, Length);
        }
        else
        {
            StreamingCopy.CopyRows(Pointer, Pitch, destination, RowBytes, RowBytes, Rows);
        }
    }

    /// <summary>Copies the bytes, packed, into <paramref name="destination"/>, which must hold <see cref="Length"/> bytes.</summary>
    public void CopyTo(Span<byte> destination)
    {
        if (destination.Length < Length)
        {
            throw new ArgumentException($"tensor '{Name}' is {Length} bytes; the destination holds {destination.Length}", nameof(destination));
        }
        fixed (byte* d = destination)
        {
            CopyTo(d);
        }
    }

    /// <summary>Row <paramref name="index"/> of the bytes (see <see cref="Rows"/>) in host memory.</summary>
    public ReadOnlySpan<byte> Row(long index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Rows);
        return OnDevice
            ? throw new InvalidOperationException($"tensor '{Name}' is in GPU memory: copy it out with CopyTo")
            : RowBytes <= int.MaxValue
                ? new ReadOnlySpan<byte>(Pointer + (index * Pitch), (int)RowBytes)
                : throw new InvalidOperationException($"a row of tensor '{Name}' is {RowBytes} bytes, too large for one span");
    }

    /// <summary>The bytes as a span; tensors over 2 GiB must be read through <see cref="Pointer"/> in pieces, parts in place row by row.</summary>
    public ReadOnlySpan<byte> Span => OnDevice
        ? throw new InvalidOperationException($"tensor '{Name}' is in GPU memory: copy it out with CopyTo")
        : !IsPacked
            ? throw new InvalidOperationException($"tensor '{Name}' lies in place in {Rows} rows {Pitch} bytes apart: copy it with CopyTo or read it by Row")
            : Length <= int.MaxValue
                ? new ReadOnlySpan<byte>(Pointer, (int)Length)
                : throw new InvalidOperationException($"tensor '{Name}' is {Length} bytes, too large for one span");
}
