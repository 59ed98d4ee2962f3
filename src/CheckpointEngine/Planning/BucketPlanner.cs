using CheckpointEngine.Memory;

namespace CheckpointEngine.Planning;

/// <summary>Cuts owners' buffers into buckets and orders them for an update (pure functions).</summary>
public static class BucketPlanner
{
    /// <summary>
    /// One owner's buckets, walking its buffers in order and its tensors by offset: a bucket closes
    /// when the next tensor would pass <paramref name="bucketSize"/>. Consecutive tensors of a buffer
    /// form one range; ranges start 256-byte aligned in the bucket.
    /// </summary>
    public static IReadOnlyList<H2DBucket> Cut(RankMetas owner, long bucketSize)
    {
        var buckets = new List<H2DBucket>();
        var ranges = new List<BucketRange>();
        var items = new List<ParameterMeta>();
        long cursor = 0;
        (int Buffer, long Start, long End, long BucketOffset)? open = null;

        void CloseRange()
        {
            if (open is { } r)
            {
                ranges.Add(new BucketRange(r.Buffer, r.Start, r.End - r.Start, r.BucketOffset));
                cursor = r.BucketOffset + (r.End - r.Start);
                open = null;
            }
        }

        void CloseBucket()
        {
            CloseRange();
            if (items.Count > 0)
            {
                buckets.Add(new H2DBucket(owner.Rank, buckets.Count, cursor, ranges, items));
            }
            ranges = [];
            items = [];
            cursor = 0;
        }

        for (var b = 0; b < owner.Buffers.Count; b++)
        {
            CloseRange();
            foreach (var meta in owner.Buffers[b].Metas.OrderBy(m => m.Offset))
            {
                if (meta.ByteLength > bucketSize)
                {
                    throw new ArgumentException($"tensor '{meta.Name}' ({meta.ByteLength} bytes) of rank {owner.Rank} is larger than the bucket size {bucketSize}", nameof(bucketSize));
                }
                // Where the tensor would land: in the open range, or at the next aligned offset in a new range.
                var start = open is { } r0 ? r0.BucketOffset + (meta.Offset - r0.Start) : BucketSizing.Align(cursor);
                if (start + meta.ByteLength > bucketSize && items.Count > 0)
                {
                    CloseBucket();
                    start = 0;
                }
                if (open is null)
                {
                    open = (b, meta.Offset, meta.Offset, start);
                }
                var r = open.Value;
                open = r with { End = Math.Max(r.End, meta.Offset + meta.ByteLength) };
                items.Add(meta with { Offset = r.BucketOffset + (meta.Offset - r.Start) });
            }
        }
        CloseBucket();
        return buckets;
    }

    /// <summary>The update order: step i takes bucket i of every owner (owners in rank order), so owners take turns.</summary>
    public static IReadOnlyList<T> Interleave<T>(IEnumerable<IReadOnlyList<T>> perOwner)
    {
        var lists = perOwner.ToList();
        var schedule = new List<T>();
        for (var i = 0; lists.Any(l => i < l.Count); i++)
        {
            schedule.AddRange(lists.Where(l => i < l.Count).Select(l => l[i]));
        }
        return schedule;
    }
}
