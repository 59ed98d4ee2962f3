using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// Where the bytes of every bucket lie in memory every worker of an update maps, when its members and workers all share one
/// host (host backend). Either in the owners' registered shared-memory segments (<see cref="Staged"/> false): workers load
/// straight out of the owners' memory, so nothing is staged and nothing is broadcast, and a rank copies into its slot only the
/// pieces of its worker's part that are not one run of the bucket (column slices). Or (<see cref="Staged"/>: a P2P update, or
/// owners' memory that is not shared) where the bucket's stager staged it in its device buffer: nothing is broadcast.
/// </summary>
internal sealed class DirectSources
{
    private readonly int[] _first = [];
    private readonly (int Segment, long Offset)[] _stagedAt = [];
    private readonly Func<int, nint>? _local;
    private readonly Func<SegmentRef, nint> _map = _ => 0;

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

    /// <param name="devices">Each member's device buffer (by group rank).</param>
    /// <param name="stagers">Each bucket's stager (group rank), in update order.</param>
    /// <param name="sizing">The buffers' layout: a stager's j-th bucket lies in its staging buffer j.</param>
    private DirectSources(IReadOnlyList<SegmentRef> devices, IReadOnlyList<int> stagers, BucketSizing sizing)
    {
        Segments = devices;
        Staged = true;
        var sent = new int[devices.Count];
        _stagedAt = [.. stagers.Select(s => (s + 1, sizing.StagingOffset(sent[s]++)))];
    }

    /// <summary>Buckets lie where their stagers staged them (see <see cref="DirectSources"/>).</summary>
    public static DirectSources InStaging(IReadOnlyList<SegmentRef> devices, IReadOnlyList<int> stagers, BucketSizing sizing) => new(devices, stagers, sizing);

    /// <summary>Buckets are staged, then read where their stagers hold them; else they are read in the owners' memory.</summary>
    public bool Staged { get; }

    /// <summary>The segments the worker maps beside its device buffer (attach index i ≥ 1 is Segments[i − 1]).</summary>
    public IReadOnlyList<SegmentRef> Segments { get; }

    private int Rank { get; }

    /// <summary>The attach index of the segment holding byte <paramref name="bucketOffset"/> of bucket <paramref name="k"/>, and the byte's offset in it.</summary>
    public (int Segment, long Offset) Locate(int k, H2DBucket bucket, long bucketOffset)
    {
        if (Staged)
        {
            return (_stagedAt[k].Segment, _stagedAt[k].Offset + bucketOffset);
        }
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
        using var copy = new StreamingCopy.Batch(runs.Sum(r => r.Length));
        foreach (var run in runs)
        {
            var (segment, offset) = Locate(-1, bucket, run.Source);
            copy.Copy((byte*)(Address(bucket.Owner, segment) + (nint)offset), (byte*)(destination + (nint)run.Destination), run.Length);
        }
    }

    /// <summary>Where an owner's segment is mapped in this process: this rank's own buffers where they are, others' as the server maps them.</summary>
    private nint Address(int owner, int segment) =>
        owner == Rank && _local is not null ? _local(segment - _first[owner]) : _map(Segments[segment - 1]);
}
