using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// Where the bytes of every bucket lie in the owners' registered shared-memory segments, for an update whose members and
/// workers all share one host (host backend): workers load straight out of the owners' memory (the attach names the
/// segments), so nothing is staged and nothing is broadcast; a rank copies into its slot only the pieces of its worker's
/// part that are not one run of the bucket (column slices).
/// </summary>
internal sealed class DirectSources
{
    private readonly int[] _first;
    private readonly Func<int, nint>? _local;
    private readonly Func<SegmentRef, nint> _map;

    /// <param name="segments">Each member's registered segments (by world rank = owner rank), in buffer order.</param>
    /// <param name="local">The address of one of this rank's own buffers, by index (those are mapped here already); null: this rank holds none.</param>
    /// <param name="rank">This rank.</param>
    /// <param name="map">Where another rank's segment is mapped in this process (read-only), for gathers.</param>
    public DirectSources(IReadOnlyList<IReadOnlyList<SegmentRef>> segments, int rank, Func<int, nint>? local, Func<SegmentRef, nint> map)
    {
        _first = new int[segments.Count];
        var all = new List<SegmentRef>();
        for (var r = 0; r < segments.Count; r++)
        {
            _first[r] = all.Count + 1; // Attach index 0 is the device buffer.
            all.AddRange(segments[r]);
        }
        Segments = all;
        Rank = rank;
        _local = local;
        _map = map;
    }

    /// <summary>The segments the worker maps beside its device buffer (attach index i ≥ 1 is Segments[i − 1]).</summary>
    public IReadOnlyList<SegmentRef> Segments { get; }

    private int Rank { get; }

    /// <summary>The attach index of the segment holding byte <paramref name="bucketOffset"/> of <paramref name="bucket"/>, and the byte's offset in it.</summary>
    public (int Segment, long Offset) Locate(H2DBucket bucket, long bucketOffset)
    {
        foreach (var r in bucket.Ranges)
        {
            if (bucketOffset >= r.BucketOffset && bucketOffset < r.BucketOffset + r.Length)
            {
                return (_first[bucket.Owner] + r.Buffer, r.Offset + bucketOffset - r.BucketOffset);
            }
        }
        foreach (var r in bucket.Ranges)
        {
            if (bucketOffset == r.BucketOffset + r.Length)
            {
                return (_first[bucket.Owner] + r.Buffer, r.Offset + r.Length); // An empty tensor at a range's end.
            }
        }
        throw new InvalidOperationException($"byte {bucketOffset} of bucket {bucket.Index} of rank {bucket.Owner} lies in none of its ranges");
    }

    /// <summary>Copies <paramref name="runs"/> of the bucket (each inside one tensor, so inside one range) out of its owner's memory to <paramref name="destination"/>.</summary>
    public unsafe void Gather(H2DBucket bucket, IReadOnlyList<ByteRun> runs, nint destination)
    {
        foreach (var run in runs)
        {
            var (segment, offset) = Locate(bucket, run.Source);
            var source = Address(bucket.Owner, segment) + (nint)offset;
            Buffer.MemoryCopy((void*)source, (void*)(destination + (nint)run.Destination), run.Length, run.Length);
        }
    }

    /// <summary>Where an owner's segment is mapped in this process: this rank's own buffers where they are, others' as the server maps them.</summary>
    private nint Address(int owner, int segment) =>
        owner == Rank && _local is not null ? _local(segment - _first[owner]) : _map(Segments[segment - 1]);
}
