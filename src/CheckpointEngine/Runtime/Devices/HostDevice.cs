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
    private const string SegmentPrefix = "ckpt-engine-dev-";

    private static int _segments;
    private static int _swept;

    public string Id { get; } = id;

    public long FreeMemory => freeMemory ?? AvailableMemory() / 2 / Math.Max(1, localRanks);

    public DeviceBuffer AllocateShared(long size)
    {
        if (Interlocked.Exchange(ref _swept, 1) == 0)
        {
            SweepDeadOwners();
        }
        var name = $"{SegmentPrefix}{Environment.ProcessId}-{Interlocked.Increment(ref _segments)}";
        return new HostDeviceBuffer(SharedMemorySegment.Create(name, size));
    }

    public bool HostAccessible => true;

    public unsafe void CopyHostToDevice(ReadOnlySpan<HostCopy> copies)
    {
        foreach (var c in copies)
        {
            Buffer.MemoryCopy((void*)c.Source, (void*)c.Destination, c.Length, c.Length);
        }
    }

    public void Dispose()
    {
    }

    /// <summary>
    /// Removes device segments whose creating process is gone (killed before it could unlink them), so
    /// crashed ranks do not pin memory on /dev/shm forever. The owner's pid is in the name.
    /// </summary>
    internal static void SweepDeadOwners()
    {
        if (!OperatingSystem.IsLinux() || !Directory.Exists(SharedMemorySegment.Directory))
        {
            return;
        }
        foreach (var path in Directory.EnumerateFiles(SharedMemorySegment.Directory, SegmentPrefix + "*"))
        {
            var rest = Path.GetFileName(path)[SegmentPrefix.Length..];
            var dash = rest.IndexOf('-', StringComparison.Ordinal);
            if (dash > 0 && int.TryParse(rest[..dash], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && !Directory.Exists($"/proc/{pid}"))
            {
                try
                {
                    File.Delete(path);
                }
                catch (IOException)
                {
                    // Someone else swept it.
                }
                catch (UnauthorizedAccessException)
                {
                    // Another user's: not ours to remove.
                }
            }
        }
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
