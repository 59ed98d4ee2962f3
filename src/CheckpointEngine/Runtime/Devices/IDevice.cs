namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// The accelerator a rank feeds: its identity, free memory, buffers shared with the colocated
/// inference worker, and host-to-device copies. Implementations: <see cref="HostDevice"/> (shared
/// memory, runs anywhere) and <see cref="CudaDevice"/> (a GPU through the CUDA driver API).
/// </summary>
public interface IDevice : IDisposable
{
    /// <summary>How the worker finds this device's parameter server (see <see cref="DeviceIds"/>).</summary>
    string Id { get; }

    /// <summary>Bytes this rank may use for update buffers now.</summary>
    long FreeMemory { get; }

    /// <summary>Whether this process can read and write device memory directly (then P2P reads land in it without a host staging copy).</summary>
    bool HostAccessible { get; }

    /// <summary>Device memory the colocated worker can map (it receives <see cref="DeviceBuffer.Kind"/> and <see cref="DeviceBuffer.Handle"/>).</summary>
    DeviceBuffer AllocateShared(long size);

    /// <summary>Copies host memory to device memory; returns when every byte is on the device.</summary>
    void CopyHostToDevice(ReadOnlySpan<HostCopy> copies);

    /// <summary>Prepares host memory that will be copied from often (page-locks it on a GPU). Balanced by <see cref="UnregisterHostMemory"/>.</summary>
    void RegisterHostMemory(nint address, long length)
    {
    }

    void UnregisterHostMemory(nint address)
    {
    }
}
