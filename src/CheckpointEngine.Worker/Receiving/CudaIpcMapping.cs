using CheckpointEngine.Interop.Cuda;

namespace CheckpointEngine.Worker;

/// <summary>
/// A parameter server's GPU buffer opened in this (worker) process through its CUDA IPC handle, on the
/// device whose UUID the attach message names (the device's primary context, the one torch uses).
/// Closed on release, so the parameter server can free or reuse the memory.
/// </summary>
internal sealed class CudaIpcMapping : IDisposable
{
    private readonly CudaDriver _cuda;
    private readonly int _device;
    private readonly nint _context;
    private readonly ulong _pointer;
    private int _closed;

    /// <exception cref="Interop.BackendUnavailableException">No CUDA driver in this process's reach.</exception>
    /// <exception cref="CudaException">The handle does not open (another machine's, freed, or a device this process cannot see).</exception>
    /// <exception cref="ArgumentException">No device with that UUID, a malformed handle, or a size beyond the allocation.</exception>
    public CudaIpcMapping(string deviceId, string handle, long size)
    {
        CuIpcMemHandle parsed;
        try
        {
            parsed = CuIpcMemHandle.FromBase64(handle);
        }
        catch (FormatException e)
        {
            throw new ArgumentException(e.Message, nameof(handle), e);
        }
        _cuda = CudaDriver.Instance;
        var ordinal = _cuda.FindDevice(deviceId);
        if (ordinal < 0)
        {
            throw new ArgumentException($"this process sees no CUDA device {deviceId} ({_cuda.DeviceCount()} visible; CUDA_VISIBLE_DEVICES={Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") ?? "unset"})", nameof(deviceId));
        }
        _device = _cuda.Device(ordinal);
        _context = _cuda.RetainPrimaryContext(_device);
        try
        {
            _cuda.SetCurrent(_context);
            _pointer = _cuda.IpcOpen(parsed);
        }
        catch
        {
            _cuda.ReleasePrimaryContext(_device);
            throw;
        }
        // The size in the attach is the parameter server's word; the driver knows the allocation's.
        var real = _cuda.BytesFrom(_pointer);
        if (real < size)
        {
            _cuda.IpcClose(_pointer);
            _cuda.ReleasePrimaryContext(_device);
            throw new ArgumentException($"the attach claims {size} bytes, but the CUDA IPC allocation holds {real}", nameof(size));
        }
        Size = size;
        Name = $"{deviceId} (CUDA IPC)";
    }

    public string Name { get; }

    public long Size { get; }

    public unsafe byte* Pointer => (byte*)_pointer;

    /// <summary>The device's primary context, which the pointer belongs to.</summary>
    public nint Context => _context;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }
        _cuda.SetCurrent(_context);
        _cuda.IpcClose(_pointer);
        _cuda.ReleasePrimaryContext(_device);
    }
}
