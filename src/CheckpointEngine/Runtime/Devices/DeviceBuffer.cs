namespace CheckpointEngine.Runtime.Devices;

/// <summary>Device memory shared with the worker: its address here, size, and how the worker maps it.</summary>
public abstract class DeviceBuffer : IDisposable
{
    public abstract nint Address { get; }

    public abstract long Size { get; }

    /// <summary>"shm" (host backend) or "cuda-ipc".</summary>
    public abstract string Kind { get; }

    /// <summary>What the worker needs to map it: a segment name, or an encoded IPC handle.</summary>
    public abstract string Handle { get; }

    /// <summary>The shared-memory segment holding the buffer, which peers on this host may map (host backend); null otherwise.</summary>
    public virtual Memory.SharedMemorySegment? SharedSegment => null;

    private int _disposed;

    /// <summary>Frees the memory once; later calls do nothing (owners dispose on several paths).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected abstract void Dispose(bool disposing);
}
