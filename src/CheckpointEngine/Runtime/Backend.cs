using CheckpointEngine.Worker;
using CheckpointEngine.Interop;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Runtime;

/// <summary>Which accelerator backend a rank uses.</summary>
public enum DeviceKind
{
    /// <summary>Shared memory and the built-in transports: runs anywhere.</summary>
    Host,

    /// <summary>A GPU through the CUDA driver API, broadcasts through NCCL.</summary>
    Cuda,
}

/// <summary>
/// A rank's device and the communicator that broadcasts its memory: the host device with the world's
/// built-in group, or a CUDA device (see <see cref="CudaOrdinal"/>) with an NCCL communicator over the
/// world's ranks.
/// </summary>
public sealed class Backend : IDisposable
{
    private readonly bool _ownsGroup;

    private Backend(DeviceKind kind, IDevice device, ICommunicator group, bool ownsGroup)
    {
        Kind = kind;
        Device = device;
        Group = group;
        _ownsGroup = ownsGroup;
    }

    public DeviceKind Kind { get; }

    public IDevice Device { get; }

    public ICommunicator Group { get; }

    /// <summary>
    /// The backend to use: <paramref name="option"/> (host|cuda|auto) if given, else <paramref name="configured"/>
    /// (<see cref="RankConfig.Device"/>), else auto: CUDA when a GPU is present (<paramref name="hasGpu"/>), else host.
    /// </summary>
    /// <exception cref="CheckpointEngineException">An unknown name, naming where it came from.</exception>
    public static DeviceKind Choose(string? option, string? configured, Func<bool>? hasGpu = null)
    {
        var (text, source) = !string.IsNullOrWhiteSpace(option)
            ? (option, "--device")
            : (configured, RankConfig.DeviceVariable);
        switch (text?.Trim().ToLowerInvariant())
        {
            case null or "" or "auto":
                return (hasGpu ?? CudaDriver.HasDevice)() ? DeviceKind.Cuda : DeviceKind.Host;
            case "host":
                return DeviceKind.Host;
            case "cuda" or "gpu":
                return DeviceKind.Cuda;
            default:
                throw new CheckpointEngineException($"{source}={text} is not a device backend: use host, cuda or auto");
        }
    }

    /// <summary>Creates this rank's backend; every rank of the world calls it (NCCL's set-up is collective).</summary>
    /// <exception cref="BackendUnavailableException">CUDA was chosen and the driver or NCCL is missing (the message lists the paths tried).</exception>
    public static async Task<Backend> CreateAsync(World world, DeviceKind kind, TimeSpan timeout, CancellationToken ct = default)
    {
        if (kind == DeviceKind.Host)
        {
            var host = new HostDevice(world.Config.HostDeviceId, world.Config.HostDeviceMemory, world.Config.LocalWorldSize);
            return new Backend(kind, host, world.Group, ownsGroup: false);
        }
        var device = new CudaDevice(CudaOrdinal(world.Config.LocalRank, CudaDriver.Instance.DeviceCount()));
        try
        {
            var nccl = await NcclCommunicator.CreateAsync(world.Group, world, device, timeout, ownsControl: false, ct).ConfigureAwait(false);
            return new Backend(kind, device, nccl, ownsGroup: true);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The CUDA device of a local rank: the one with its number, as torchrun assigns GPUs; or the only
    /// visible one, when the launcher gives each process its own GPU through CUDA_VISIBLE_DEVICES.
    /// </summary>
    public static int CudaOrdinal(int localRank, int visibleDevices) => visibleDevices == 1 ? 0 : localRank;

    public void Dispose()
    {
        if (_ownsGroup)
        {
            Group.Dispose();
        }
        Device.Dispose();
    }
}
