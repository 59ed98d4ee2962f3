using System.Collections.Concurrent;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>
/// Keeps each device's buffer mapped between updates. The parameter server keeps its device buffer
/// while the bucket layout is unchanged, so the next update names the same segment and the worker
/// skips mapping it again and faulting every page in (which costs more than the copy itself). A
/// different segment for the same device replaces the old mapping.
/// </summary>
internal static class SegmentMappings
{
    private static readonly ConcurrentDictionary<string, SharedMemorySegment> ByDevice = new(StringComparer.Ordinal);

    /// <summary>The mapping of <paramref name="name"/> for this device socket, reused when it is the same segment.</summary>
    public static SharedMemorySegment Acquire(string socketAddress, string name, long size)
    {
        lock (ByDevice)
        {
            if (ByDevice.TryGetValue(socketAddress, out var cached))
            {
                if (cached.Name == name && cached.Size >= size && File.Exists(cached.Path))
                {
                    return cached;
                }
                ByDevice.TryRemove(socketAddress, out _);
                cached.Dispose();
            }
            var segment = SharedMemorySegment.Open(name, size);
            ByDevice[socketAddress] = segment;
            return segment;
        }
    }

    /// <summary>Unmaps every kept buffer (a host shutting down, or freeing memory between updates).</summary>
    public static void ReleaseAll()
    {
        lock (ByDevice)
        {
            foreach (var s in ByDevice.Values)
            {
                s.Dispose();
            }
            ByDevice.Clear();
        }
    }
}
