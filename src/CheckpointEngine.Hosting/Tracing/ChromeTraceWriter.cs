using System.Globalization;
using System.Text.Json;

namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// Writes an <see cref="UpdateTrace"/> as Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing):
/// each rank a process, each track a named thread, each bucket on a track a complete ("X") event in
/// microseconds with its bucket index, bytes and owner. Across hosts, a process "links" after the ranks has a track per data
/// link between host leaders ("10.0.0.1 → 10.0.0.2") with a "link" event per bucket (see <see cref="TraceLeg"/>).
/// </summary>
internal static class ChromeTraceWriter
{
    public static void WriteFile(UpdateTrace trace, string path)
    {
        using var file = File.Create(path);
        Write(trace, file);
    }

    public static void Write(UpdateTrace trace, Stream stream)
    {
        var spans = trace.Spans();
        var efficiency = trace.Efficiency();
        var legs = trace.Legs();
        var links = legs.Select(l => l.Link).Distinct().Order(StringComparer.Ordinal).ToList();
        var linksPid = spans.Count == 0 ? 0 : spans.Max(s => s.Rank) + 1;
        using var w = new Utf8JsonWriter(stream);
        w.WriteStartObject();
        w.WriteStartArray("traceEvents");
        foreach (var rank in spans.Select(s => s.Rank).Distinct().Order())
        {
            Metadata(w, "process_name", rank, 0, "name", $"rank {rank}");
            Metadata(w, "process_sort_index", rank, 0, "sort_index", rank);
            foreach (var track in spans.Where(s => s.Rank == rank).Select(s => s.Track).Distinct().Order())
            {
                Metadata(w, "thread_name", rank, (int)track, "name", track.Name(trace.Method));
                Metadata(w, "thread_sort_index", rank, (int)track, "sort_index", (int)track);
            }
        }
        if (links.Count > 0)
        {
            Metadata(w, "process_name", linksPid, 0, "name", "links");
            Metadata(w, "process_sort_index", linksPid, 0, "sort_index", linksPid);
            foreach (var (link, i) in links.Select((l, i) => (l, i + 1)))
            {
                Metadata(w, "thread_name", linksPid, i, "name", link);
                Metadata(w, "thread_sort_index", linksPid, i, "sort_index", i);
            }
        }
        foreach (var s in spans.OrderBy(s => s.StartUs).ThenBy(s => s.Rank).ThenBy(s => s.Track))
        {
            w.WriteStartObject();
            // Named by bucket, so Perfetto gives a bucket the same color on every track and rank.
            w.WriteString("name", s.Track switch
            {
                TraceTrack.Update => $"update ({trace.Method})",
                TraceTrack.WaitForBroadcast or TraceTrack.WaitForReload => $"wait {s.Bucket}",
                _ => $"bucket {s.Bucket}",
            });
            w.WriteString("cat", s.Track.Category());
            w.WriteString("ph", "X");
            // Rounded at both ends, so a span that starts where the previous one ended does not overlap it by a rounding error.
            var ts = Math.Round(s.StartUs, 3);
            w.WriteNumber("ts", ts);
            w.WriteNumber("dur", Math.Round(Math.Round(s.EndUs, 3) - ts, 3));
            w.WriteNumber("pid", s.Rank);
            w.WriteNumber("tid", (int)s.Track);
            w.WriteStartObject("args");
            if (s.Track != TraceTrack.Update)
            {
                w.WriteNumber("bucket", s.Bucket);
                w.WriteNumber("owner", s.Owner);
            }
            w.WriteNumber("bytes", s.Bytes);
            w.WriteString("stage", s.Track.Name(trace.Method));
            w.WriteEndObject();
            w.WriteEndObject();
        }
        foreach (var l in legs)
        {
            w.WriteStartObject();
            w.WriteString("name", $"bucket {l.Bucket}");
            w.WriteString("cat", "link");
            w.WriteString("ph", "X");
            var ts = Math.Round(l.StartUs, 3);
            w.WriteNumber("ts", ts);
            w.WriteNumber("dur", Math.Round(Math.Round(l.StartUs + l.DurationUs, 3) - ts, 3));
            w.WriteNumber("pid", linksPid);
            w.WriteNumber("tid", links.IndexOf(l.Link) + 1);
            w.WriteStartObject("args");
            w.WriteNumber("bucket", l.Bucket);
            w.WriteNumber("bytes", l.Bytes);
            w.WriteNumber("from", l.From);
            w.WriteNumber("to", l.To);
            w.WriteNumber("sender_us", Math.Round(l.SenderTime.TotalMicroseconds, 1));
            w.WriteNumber("receiver_us", Math.Round(l.ReceiverTime.TotalMicroseconds, 1));
            if (TraceLeg.Rate(l.Bytes, l.SenderTime, l.ReceiverTime) is var rate && double.IsFinite(rate))
            {
                w.WriteNumber("gbps", Math.Round(rate / 1e9, 4));
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteString("displayTimeUnit", "ms");
        // Strings only: viewers show otherData as-is; the renderer takes its title from it.
        w.WriteStartObject("otherData");
        w.WriteString("checkpoint", trace.Checkpoint);
        w.WriteString("method", trace.Method);
        w.WriteString("ranks", trace.Ranks.Count.ToString(CultureInfo.InvariantCulture));
        w.WriteString("efficiency", efficiency.Value.ToString("F3", CultureInfo.InvariantCulture));
        w.WriteString("busiest", efficiency.Describe(trace.Method));
        if (TraceLeg.Totals(legs) is { Count: > 0 } totals)
        {
            // Slowest first: the link that holds the update back leads.
            w.WriteString("links", string.Join("; ", totals.Select(t => string.Create(CultureInfo.InvariantCulture,
                $"{t.Link} {(double.IsFinite(t.Rate) ? $"{t.Rate / 1e9:F3} GB/s" : "never waited")} ({t.Bytes} bytes; sender {t.SenderTime.TotalSeconds:F3} s, receiver {t.ReceiverTime.TotalSeconds:F3} s)"))));
            w.WriteString("slowest_link", totals[0].Link);
        }
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void Metadata(Utf8JsonWriter w, string name, int pid, int tid, string key, object value)
    {
        w.WriteStartObject();
        w.WriteString("name", name);
        w.WriteString("ph", "M");
        w.WriteNumber("pid", pid);
        w.WriteNumber("tid", tid);
        w.WriteStartObject("args");
        if (value is int i)
        {
            w.WriteNumber(key, i);
        }
        else
        {
            w.WriteString(key, (string)value);
        }
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
