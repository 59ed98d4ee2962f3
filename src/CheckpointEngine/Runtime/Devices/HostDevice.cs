using System.Globalization;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// The host backend's "device": memory is shared-memory segments the colocated worker maps, and a
/// copy to the device is a memcpy. Free memory is <c>CKPT_ENGINE_HOST_DEVICE_MEMORY_GB</c> if set,
/// else a share of the machine's available memory split over the local ranks.
/// </summary>
public sealed class HostDevice(string id, long? freeMemory = null, int localRanks = 1) : IDevice
{
    public const string MemoryVariable = "CKPT_ENGINE_HOST_DEVICE_MEMORY_GB";

    private static int _segments;

    public string Id { get; } = id;

    public long FreeMemory => freeMemory ?? FromEnvironment() ?? AvailableMemory() / 2 / Math.Max(1, localRanks);

    public DeviceBuffer AllocateShared(long size)
    {
        var name = $"ckpt-engine-dev-{Environment.ProcessId}-{Interlocked.Increment(ref _segments)}";
        return new HostDeviceBuffer(SharedMemorySegment.Create(name, size));
    }

    public unsafe void CopyHostToDevice(nint source, nint destination, long length) =>
        Buffer.MemoryCopy((void*)source, (void*)destination, length, length);

    public void Dispose()
    {
    }

    private static long? FromEnvironment()
    {
        var text = Environment.GetEnvironmentVariable(MemoryVariable);
        if (string.IsNullOrWhiteSpace(text))
        {
            return null;
        }
        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var gb) && gb > 0
            ? (long)(gb * (1L << 30))
            : throw new ArgumentException($"{MemoryVariable}={text} is not a positive number of GiB");
    }

    /// <summary>MemAvailable from /proc/meminfo (what can be used without swapping), or 4 GiB where there is none.</summary>
    private static long AvailableMemory()
    {
        const string meminfo = "/proc/meminfo";
        if (File.Exists(meminfo))
        {
            foreach (var line in File.ReadLines(meminfo))
            {
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                {
                    var kb = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
                    return kb * 1024;
                }
            }
        }
        return 4L << 30;
    }
}
