using System.Globalization;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// The host backend's "device": memory is shared-memory segments the colocated worker maps, and a
/// copy to the device is a memcpy. Free memory is <paramref name="freeMemory"/> if given (configured:
/// <see cref="RankConfig.HostDeviceMemory"/>), else a share of the machine's available memory split over the local ranks.
/// </summary>
public sealed class HostDevice(string id, long? freeMemory = null, int localRanks = 1) : IDevice
{
    private static int _swept;

    public string Id { get; } = id;

    public long FreeMemory => freeMemory ?? AvailableMemory() / 2 / Math.Max(1, localRanks);

    public DeviceBuffer AllocateShared(long size)
    {
        if (Interlocked.Exchange(ref _swept, 1) == 0)
        {
            SharedMemorySegment.SweepAbandoned(); // Segments of ranks that crashed before.
        }
        return new HostDeviceBuffer(SharedMemorySegment.Create(SharedMemorySegment.NewName("dev"), size));
    }

    public bool HostAccessible => true;

    public unsafe void CopyHostToDevice(ReadOnlySpan<HostCopy> copies)
    {
        long total = 0;
        foreach (var c in copies)
        {
            total += c.Length;
        }
        using var copy = new StreamingCopy.Batch(total);
        foreach (var c in copies)
        {
            copy.Copy((byte*)c.Source, (byte*)c.Destination, c.Length);
        }
    }

    public void Dispose()
    {
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
