using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>
/// Keeps each device's buffer mapped between updates. The parameter server keeps its device buffer
/// while the bucket layout is unchanged, so the next update names the same segment and the worker
/// skips mapping it again and faulting every page in (which costs more than the copy itself). A
/// different segment for the same device replaces the old mapping; a mapping in use by a running
/// update is never unmapped under it.
/// </summary>
internal static class SegmentMappings
{
    private sealed class Entry(SharedMemorySegment segment)
    {
        public SharedMemorySegment Segment { get; } = segment;

        public bool InUse { get; set; }
    }

    private static readonly Dictionary<string, Entry> ByDevice = new(StringComparer.Ordinal);

    /// <summary>The mapping of <paramref name="name"/> for this device socket (reused when it is the same segment), marked in use.</summary>
    public static SharedMemorySegment Acquire(string socketAddress, string name, long size)
    {
        lock (ByDevice)
        {
            if (ByDevice.TryGetValue(socketAddress, out var cached))
            {
                if (cached.InUse)
                {
                    throw new InvalidOperationException($"device socket {socketAddress} is already receiving an update");
                }
                if (cached.Segment.Name == name && cached.Segment.Size >= size && File.Exists(cached.Segment.Path))
                {
                    cached.InUse = true;
                    return cached.Segment;
                }
                ByDevice.Remove(socketAddress);
                cached.Segment.Dispose();
            }
            var entry = new Entry(SharedMemorySegment.Open(name, size)) { InUse = true };
            ByDevice[socketAddress] = entry;
            return entry.Segment;
        }
    }

    /// <summary>The update is done with the buffer; the mapping stays for the next one.</summary>
    public static void Return(string socketAddress)
    {
        lock (ByDevice)
        {
            if (ByDevice.TryGetValue(socketAddress, out var entry))
            {
                entry.InUse = false;
            }
        }
    }

    /// <summary>Unmaps the buffer of a device (after a failure it may be gone for good).</summary>
    public static void Drop(string socketAddress)
    {
        lock (ByDevice)
        {
            if (ByDevice.Remove(socketAddress, out var entry))
            {
                entry.Segment.Dispose();
            }
        }
    }

    /// <summary>Unmaps every kept buffer that no update is using.</summary>
    public static void ReleaseAll()
    {
        lock (ByDevice)
        {
            foreach (var (address, entry) in ByDevice.Where(kv => !kv.Value.InUse).ToList())
            {
                ByDevice.Remove(address);
                entry.Segment.Dispose();
            }
        }
    }
}
