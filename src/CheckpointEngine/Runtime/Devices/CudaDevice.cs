using CheckpointEngine.Interop.Cuda;

namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// A GPU through the CUDA driver API. Its id is the device UUID ("GPU-…", what vLLM reports, so
/// workers find their parameter server). Update buffers are device allocations the worker opens
/// through a CUDA IPC handle; host-to-device copies run on a dedicated stream from page-locked host
/// memory, so they overlap the broadcast (which NCCL runs on its own stream).
/// </summary>
public sealed class CudaDevice : IDevice
{
    private readonly CudaDriver _cuda;
    private readonly int _device;
    private readonly nint _stream;
    private readonly nint _copied;
    private readonly Lock _lock = new();
    private readonly Dictionary<nint, long> _registered = [];
    private int _disposed;

    /// <param name="ordinal">The CUDA device ordinal (within CUDA_VISIBLE_DEVICES): the local rank, as torchrun assigns GPUs.</param>
    /// <exception cref="Interop.BackendUnavailableException">No CUDA driver.</exception>
    /// <exception cref="ArgumentOutOfRangeException">No device with that ordinal.</exception>
    public CudaDevice(int ordinal)
    {
        _cuda = CudaDriver.Instance;
        var count = _cuda.DeviceCount();
        if (ordinal < 0 || ordinal >= count)
        {
            throw new ArgumentOutOfRangeException(nameof(ordinal), $"CUDA device {ordinal} does not exist: this machine shows {count} (CUDA_VISIBLE_DEVICES={Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") ?? "unset"})");
        }
        Ordinal = ordinal;
        _device = _cuda.Device(ordinal);
        Context = _cuda.RetainPrimaryContext(_device);
        Id = _cuda.DeviceUuid(_device);
        _stream = _cuda.CreateStream();
        _copied = _cuda.CreateEvent();
    }

    public int Ordinal { get; }

    /// <summary>The device's primary context (shared with torch in the same process, and with NCCL here).</summary>
    public nint Context { get; }

    public string Id { get; }

    public bool HostAccessible => false;

    public long FreeMemory
    {
        get
        {
            _cuda.SetCurrent(Context);
            return _cuda.MemoryInfo().Free;
        }
    }

    public DeviceBuffer AllocateShared(long size)
    {
        _cuda.SetCurrent(Context);
        return new CudaDeviceBuffer(_cuda, Context, size);
    }

    /// <summary>Queues every copy on the copy stream, then waits for all of them at once.</summary>
    public void CopyHostToDevice(ReadOnlySpan<HostCopy> copies)
    {
        lock (_lock)
        {
            _cuda.SetCurrent(Context);
            foreach (var c in copies)
            {
                _cuda.CopyHostToDeviceAsync((ulong)c.Destination, c.Source, c.Length, _stream);
            }
            _cuda.Record(_copied, _stream);
            _cuda.Wait(_copied);
        }
    }

    /// <summary>Page-locks a host buffer (counted: the same buffer registered twice is unlocked on its last unregister).</summary>
    public void RegisterHostMemory(nint address, long length)
    {
        lock (_registered)
        {
            if (_registered.TryGetValue(address, out var n))
            {
                _registered[address] = n + 1;
                return;
            }
            _cuda.SetCurrent(Context);
            _cuda.HostRegister(address, length); // Registered already by someone else in this process: fine too.
            _registered[address] = 1;
        }
    }

    public void UnregisterHostMemory(nint address)
    {
        lock (_registered)
        {
            if (!_registered.TryGetValue(address, out var n))
            {
                return;
            }
            if (n > 1)
            {
                _registered[address] = n - 1;
                return;
            }
            _registered.Remove(address);
            _cuda.SetCurrent(Context);
            _cuda.HostUnregister(address);
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _cuda.SetCurrent(Context);
        lock (_registered)
        {
            foreach (var address in _registered.Keys)
            {
                _cuda.HostUnregister(address);
            }
            _registered.Clear();
        }
        _cuda.DestroyEvent(_copied);
        _cuda.DestroyStream(_stream);
        _cuda.ReleasePrimaryContext(_device);
    }
}

/// <summary>A device allocation shared with the worker through a CUDA IPC handle (base64 in the attach message).</summary>
public sealed class CudaDeviceBuffer : DeviceBuffer
{
    private readonly CudaDriver _cuda;
    private readonly nint _context;
    private readonly ulong _pointer;

    internal CudaDeviceBuffer(CudaDriver cuda, nint context, long size)
    {
        _cuda = cuda;
        _context = context;
        Size = size;
        _pointer = cuda.Allocate(size);
        try
        {
            Handle = cuda.IpcHandle(_pointer).ToBase64();
        }
        catch
        {
            cuda.Free(_pointer);
            throw;
        }
    }

    public override nint Address => (nint)_pointer;

    public override long Size { get; }

    public override string Kind => "cuda-ipc";

    public override string Handle { get; }

    protected override void Dispose(bool disposing)
    {
        _cuda.SetCurrent(_context);
        _cuda.Free(_pointer);
    }
}
