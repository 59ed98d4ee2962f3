using System.Globalization;
using System.Text.Json;

namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// Writes an <see cref="UpdateTrace"/> as Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing):
/// each rank a process, each track a named thread, each bucket on a track a complete ("X") event in
/// microseconds with its bucket index, bytes and owner.
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
        w.WriteEndArray();
        w.WriteString("displayTimeUnit", "ms");
        // Strings only: viewers show otherData as-is; the renderer takes its title from it.
        w.WriteStartObject("otherData");
        w.WriteString("checkpoint", trace.Checkpoint);
        w.WriteString("method", trace.Method);
        w.WriteString("ranks", trace.Ranks.Count.ToString(CultureInfo.InvariantCulture));
        w.WriteString("efficiency", efficiency.Value.ToString("F3", CultureInfo.InvariantCulture));
        w.WriteString("busiest", efficiency.Describe(trace.Method));
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
