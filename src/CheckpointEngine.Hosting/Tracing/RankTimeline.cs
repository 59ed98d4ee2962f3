using System.Text.Json;
using CheckpointEngine.Server;

namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// One rank's part of an update trace: its bucket timings and when its update started by the wall
/// clock, which lines the ranks up (their stage offsets count from each rank's own start). Travels
/// between ranks as a small JSON blob.
/// </summary>
/// <param name="Links">Its legs on data links to and from other hosts (none on one host).</param>
internal sealed record RankTimeline(int Rank, DateTimeOffset Started, TimeSpan Duration, IReadOnlyList<BucketTiming> Buckets, IReadOnlyList<LinkTiming>? Links = null)
{
    /// <param name="finished">The wall-clock time the update returned on this rank (its report's duration ends there).</param>
    public static RankTimeline From(UpdateReport report, DateTimeOffset finished) =>
        new(report.Rank, finished - report.Duration, report.Duration, report.Buckets, report.Links);

    /// <summary>Ticks throughout, so nothing is rounded on the way.</summary>
    public byte[] ToJson()
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteNumber("rank", Rank);
            w.WriteNumber("started", Started.UtcTicks);
            w.WriteNumber("duration", Duration.Ticks);
            w.WriteStartArray("buckets");
            foreach (var b in Buckets)
            {
                w.WriteStartArray();
                foreach (var v in new[] { b.Index, b.Owner, b.Bytes, b.HostToDeviceStart.Ticks, b.HostToDeviceEnd.Ticks,
                    b.BroadcastStart.Ticks, b.BroadcastEnd.Ticks, b.ReloadStart.Ticks, b.ReloadEnd.Ticks })
                {
                    w.WriteNumberValue(v);
                }
                w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteStartArray("links");
            foreach (var l in Links ?? [])
            {
                w.WriteStartObject();
                w.WriteNumber("bucket", l.Bucket);
                w.WriteNumber("peer", l.Peer);
                w.WriteString("host", l.PeerHost);
                w.WriteBoolean("sent", l.Sent);
                w.WriteNumber("bytes", l.Bytes);
                w.WriteNumber("start", l.Start.Ticks);
                w.WriteNumber("end", l.End.Ticks);
                w.WriteNumber("busy", l.Busy.Ticks);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <param name="from">Who sent it, for the error.</param>
    public static RankTimeline FromJson(byte[] blob, int from)
    {
        try
        {
            using var doc = JsonDocument.Parse(blob);
            var root = doc.RootElement;
            var buckets = root.GetProperty("buckets").EnumerateArray().Select(a =>
            {
                var v = a.EnumerateArray().Select(x => x.GetInt64()).ToArray();
                return v.Length == 9
                    ? new BucketTiming((int)v[0], (int)v[1], v[2], T(v[3]), T(v[4]), T(v[5]), T(v[6]), T(v[7]), T(v[8]))
                    : throw new FormatException($"a bucket has {v.Length} numbers, not 9");
            }).ToList();
            var links = root.GetProperty("links").EnumerateArray().Select(l => new LinkTiming(l.GetProperty("bucket").GetInt32(), l.GetProperty("peer").GetInt32(),
                l.GetProperty("host").GetString() ?? throw new FormatException("a link has a null host"), l.GetProperty("sent").GetBoolean(), l.GetProperty("bytes").GetInt64(),
                T(l.GetProperty("start").GetInt64()), T(l.GetProperty("end").GetInt64()), T(l.GetProperty("busy").GetInt64()))).ToList();
            return new RankTimeline(root.GetProperty("rank").GetInt32(), new DateTimeOffset(root.GetProperty("started").GetInt64(), TimeSpan.Zero),
                T(root.GetProperty("duration").GetInt64()), buckets, links);
        }
        catch (Exception e) when (e is JsonException or FormatException or KeyNotFoundException or InvalidOperationException or ArgumentOutOfRangeException)
        {
            throw new UpdateFailedException($"rank {from} sent malformed bucket timings: {e.Message}", e);
        }

        static TimeSpan T(long ticks) => TimeSpan.FromTicks(ticks);
    }
}
