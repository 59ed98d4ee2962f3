using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>
/// Keeps each device's buffer mapped between updates, with the owners' registered segments an attach named
/// beside it. The parameter server keeps its device buffer while the bucket layout is unchanged (and pooled
/// registrations keep their segments), so the next update names the same segments and the worker skips mapping
/// them again and faulting every page in (which costs more than the copy itself). A different segment for the same
/// device replaces the old mapping, registered segments the attach no longer names are unmapped (their memory is
/// freed once the owner unregistered them), and mappings in use by a running update are never unmapped under it.
/// </summary>
internal static class SegmentMappings
{
    private sealed class Entry(SharedMemorySegment segment)
    {
        public SharedMemorySegment Segment { get; } = segment;

        public bool InUse { get; set; }

        /// <summary>The owners' registered segments named by the last attach, read-only, by name.</summary>
        public Dictionary<string, SharedMemorySegment> Registered { get; } = new(StringComparer.Ordinal);

        public void Dispose()
        {
            Segment.Dispose();
            DropRegistered();
        }

        public void DropRegistered()
        {
            foreach (var s in Registered.Values)
            {
                s.Dispose();
            }
            Registered.Clear();
        }
    }

    private static readonly Dictionary<string, Entry> ByDevice = new(StringComparer.Ordinal);

    /// <summary>
    /// The mapping of <paramref name="name"/> for this device socket (reused when it is the same segment), marked in use, and
    /// the read-only mappings of <paramref name="registered"/> in their order (reused when named again; faulted in when new).
    /// </summary>
    public static (SharedMemorySegment Buffer, SharedMemorySegment[] Registered) Acquire(string socketAddress, string name, long size, IReadOnlyList<SegmentRef> registered)
    {
        lock (ByDevice)
        {
            Entry? entry = null;
            if (ByDevice.TryGetValue(socketAddress, out var cached))
            {
                if (cached.InUse)
                {
                    throw new InvalidOperationException($"device socket {socketAddress} is already receiving an update");
                }
                if (cached.Segment.Name == name && cached.Segment.Size >= size && File.Exists(cached.Segment.Path))
                {
                    entry = cached;
                }
                else
                {
                    ByDevice.Remove(socketAddress);
                    cached.Dispose();
                }
            }
            entry ??= ByDevice[socketAddress] = new Entry(SharedMemorySegment.Open(name, size));
            try
            {
                var mapped = new SharedMemorySegment[registered.Count];
                var kept = new Dictionary<string, SharedMemorySegment>(StringComparer.Ordinal);
                for (var i = 0; i < mapped.Length; i++)
                {
                    var r = registered[i];
                    if (kept.TryGetValue(r.Handle, out var twice))
                    {
                        mapped[i] = twice;
                        continue;
                    }
                    if (entry.Registered.Remove(r.Handle, out var old) && (old.Size < r.Size || !File.Exists(old.Path)))
                    {
                        old.Dispose();
                        old = null;
                    }
                    // Not populated up front: a segment may have holes (a peer's unused device slots), and reading them would allocate memory.
                    old ??= SharedMemorySegment.OpenReadOnly(r.Handle, r.Size);
                    mapped[i] = kept[r.Handle] = old;
                }
                entry.DropRegistered(); // Those no longer named (or the rest of a failed attach).
                foreach (var (n, s) in kept)
                {
                    entry.Registered[n] = s;
                }
                entry.InUse = true;
                return (entry.Segment, mapped);
            }
            catch
            {
                ByDevice.Remove(socketAddress);
                entry.Dispose();
                throw;
            }
        }
    }

    /// <summary>The update is done with the buffer; the mappings stay for the next one.</summary>
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

    /// <summary>Unmaps the buffer of a device and the registered segments beside it (after a failure they may be gone for good).</summary>
    public static void Drop(string socketAddress)
    {
        lock (ByDevice)
        {
            if (ByDevice.Remove(socketAddress, out var entry))
            {
                entry.Dispose();
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
                entry.Dispose();
            }
        }
    }
}
