namespace CheckpointEngine.Checkpoints;

/// <summary>
/// A tensor's bytes where they lie (a mapped file or a host buffer), without a copy. Valid only
/// while the owner of the memory is alive.
/// </summary>
public readonly unsafe struct TensorView(TensorInfo info, byte* pointer, nint deviceContext = 0)
{
    public TensorInfo Info { get; } = info;

    public byte* Pointer { get; } = pointer;

    public long Length => Info.ByteLength;

    /// <summary>
    /// The bytes are in GPU memory (a worker's CUDA IPC mapping): <see cref="Pointer"/> is a device
    /// pointer for CUDA calls and kernels in <see cref="DeviceContext"/>, not for the CPU; copy out with <see cref="CopyTo"/>.
    /// </summary>
    public bool OnDevice => DeviceContext != 0;

    /// <summary>The CUDA context the device pointer belongs to (the device's primary context), or 0 for host memory.</summary>
    public nint DeviceContext { get; } = deviceContext;

    /// <summary>Copies the tensor's bytes to host memory at <paramref name="destination"/> (a device-to-host copy when <see cref="OnDevice"/>).</summary>
    public void CopyTo(byte* destination)
    {
        if (OnDevice)
        {
            var cuda = Interop.Cuda.CudaDriver.Instance;
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
        ? throw new InvalidOperationException($"tensor '{Info.Name}' is in GPU memory: copy it out with CopyTo")
        : Length <= int.MaxValue
            ? new ReadOnlySpan<byte>(Pointer, (int)Length)
            : throw new InvalidOperationException($"tensor '{Info.Name}' is {Length} bytes, too large for one span");
}
