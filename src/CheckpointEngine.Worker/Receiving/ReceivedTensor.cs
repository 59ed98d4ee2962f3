using System.Collections.Immutable;
using CheckpointEngine.Interop.Cuda;

namespace CheckpointEngine.Worker;

/// <summary>
/// One tensor of a bucket where it lies in the mapped update buffer, without a copy: valid only during
/// the <see cref="BucketHandler"/> call. <see cref="Offset"/> is its place in the buffer.
/// </summary>
public readonly unsafe struct ReceivedTensor(string name, DType dtype, ImmutableArray<long> shape, long offset, long length, byte* pointer, nint deviceContext,
    TensorPart? part = null)
{
    /// <summary>
    /// Null: the whole tensor. Otherwise only the slices this worker declared it keeps (see <see cref="WorkerWants"/>),
    /// packed along <see cref="TensorPart.Dim"/>; <see cref="Shape"/> is the part's shape and <see cref="TensorPart.FullShape"/> the tensor's.
    /// </summary>
    public TensorPart? Part { get; } = part;

    public string Name { get; } = name;

    public DType DType { get; } = dtype;

    public ImmutableArray<long> Shape { get; } = shape;

    public long Offset { get; } = offset;

    public long Length { get; } = length;

    /// <summary>The first byte: a host pointer, or a device pointer when <see cref="OnDevice"/>.</summary>
    public byte* Pointer { get; } = pointer;

    /// <summary>
    /// The bytes are in GPU memory (a CUDA IPC mapping): <see cref="Pointer"/> is a device pointer for CUDA
    /// calls and kernels in <see cref="DeviceContext"/>, not for the CPU; copy out with <see cref="CopyTo"/>.
    /// </summary>
    public bool OnDevice => DeviceContext != 0;

    /// <summary>The CUDA context the device pointer belongs to (the device's primary context), or 0 for host memory.</summary>
    public nint DeviceContext { get; } = deviceContext;

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>Copies the bytes to host memory at <paramref name="destination"/> (a device-to-host copy when <see cref="OnDevice"/>).</summary>
    public void CopyTo(byte* destination)
    {
        if (OnDevice)
        {
            var cuda = CudaDriver.Instance;
            cuda.SetCurrent(DeviceContext); // Contexts are per thread; handlers run on any pool thread.
            cuda.CopyDeviceToHost((nint)destination, (ulong)Pointer, Length);
        }
        else
        {
            Buffer.MemoryCopy(Pointer, destination, Length, Length);
        }
    }

    /// <summary>The bytes as a span; tensors over 2 GiB must be read through <see cref="Pointer"/> in pieces.</summary>
    public ReadOnlySpan<byte> Span => OnDevice
        ? throw new InvalidOperationException($"tensor '{Name}' is in GPU memory: copy it out with CopyTo")
        : Length <= int.MaxValue
            ? new ReadOnlySpan<byte>(Pointer, (int)Length)
            : throw new InvalidOperationException($"tensor '{Name}' is {Length} bytes, too large for one span");
}
