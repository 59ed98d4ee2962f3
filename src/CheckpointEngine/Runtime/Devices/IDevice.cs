namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// The accelerator a rank feeds: its identity, free memory, buffers shared with the colocated
/// inference worker, and host-to-device copies. Implementations: <see cref="HostDevice"/> (shared
/// memory, runs anywhere); CUDA later.
/// </summary>
public interface IDevice : IDisposable
{
    /// <summary>How the worker finds this device's parameter server (see <see cref="DeviceIds"/>).</summary>
    string Id { get; }

    /// <summary>Bytes this rank may use for update buffers now.</summary>
    long FreeMemory { get; }

    /// <summary>Device memory the colocated worker can map (it receives <see cref="DeviceBuffer.Kind"/> and <see cref="DeviceBuffer.Handle"/>).</summary>
    DeviceBuffer AllocateShared(long size);

    /// <summary>Copies host memory to device memory; returns when the bytes are on the device.</summary>
    void CopyHostToDevice(nint source, nint destination, long length);
}
