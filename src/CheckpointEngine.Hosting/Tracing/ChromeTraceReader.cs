using System.Text.Json;

namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// Reads a trace-event JSON file (ours, or any with complete "X" events) into a <see cref="Timeline"/>:
/// a row per process × thread of stage events; waits only stretch the time axis, update spans are left out.
/// </summary>
internal static class ChromeTraceReader
{
    public static Timeline Read(string path)
    {
        if (!File.Exists(path))
        {
            throw new TraceFormatException($"trace file {path} does not exist");
        }
        JsonDocument doc;
        try
        {
            using var stream = File.OpenRead(path);
            doc = JsonDocument.Parse(stream, new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new TraceFormatException($"{path} is not JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): a trace-event file is {{\"traceEvents\": [...]}}", e);
        }
        using (doc)
        {
            return Read(doc.RootElement, path);
        }
    }

    private static Timeline Read(JsonElement root, string path)
    {
        // The format allows a bare array of events too.
        var events = root.ValueKind switch
        {
            JsonValueKind.Array => root,
            JsonValueKind.Object when root.TryGetProperty("traceEvents", out var e) && e.ValueKind == JsonValueKind.Array => e,
            _ => throw new TraceFormatException($"{path} is not a trace-event file: it has no \"traceEvents\" array"),
        };
        var processNames = new Dictionary<int, string>();
        var processOrder = new Dictionary<int, long>();
        var threadNames = new Dictionary<(int, int), string>();
        var threadOrder = new Dictionary<(int, int), long>();
        var bars = new Dictionary<(int Pid, int Tid), List<Timeline.Bar>>();
        double start = double.PositiveInfinity, end = double.NegativeInfinity;
        var index = 0;
        foreach (var e in events.EnumerateArray())
        {
            var at = index++;
            TraceFormatException Bad(string what) => new($"{path}: event {at} {what}");
            if (e.ValueKind != JsonValueKind.Object)
            {
                throw Bad("is not an object");
            }
            var ph = Text(e, "ph");
            if (ph is not ("X" or "M"))
            {
                continue;
            }
            var pid = Int(e, "pid") ?? throw Bad("has no numeric \"pid\"");
            var tid = Int(e, "tid") ?? 0;
            var args = e.TryGetProperty("args", out var a) && a.ValueKind == JsonValueKind.Object ? a : default;
            if (ph == "M")
            {
                switch (Text(e, "name"))
                {
                    case "process_name" when Text(args, "name") is { } n:
                        processNames[pid] = n;
                        break;
                    case "thread_name" when Text(args, "name") is { } n:
                        threadNames[(pid, tid)] = n;
                        break;
                    case "process_sort_index" when Long(args, "sort_index") is { } i:
                        processOrder[pid] = i;
                        break;
                    case "thread_sort_index" when Long(args, "sort_index") is { } i:
                        threadOrder[(pid, tid)] = i;
                        break;
                }
                continue;
            }
            var ts = Number(e, "ts") ?? throw Bad("has no numeric \"ts\"");
            var dur = Number(e, "dur") ?? throw Bad("has no numeric \"dur\"");
            if (dur < 0 || !double.IsFinite(ts) || !double.IsFinite(dur))
            {
                throw Bad($"has ts {ts} and dur {dur}: a complete event needs a finite start and a duration of at least 0");
            }
            var cat = Text(e, "cat");
            if (cat == "update")
            {
                // The whole update, setup included: not drawn, and it does not stretch the axis (the pipeline would shrink to a corner).
                continue;
            }
            start = Math.Min(start, ts);
            end = Math.Max(end, ts + dur);
            if (cat == "wait")
            {
                continue;
            }
            if (!bars.TryGetValue((pid, tid), out var list))
            {
                bars[(pid, tid)] = list = [];
            }
            list.Add(new Timeline.Bar(ts, dur, Int(args, "bucket"), Long(args, "bytes"), Int(args, "owner")));
        }
        var rows = bars
            .OrderBy(kv => processOrder.GetValueOrDefault(kv.Key.Pid, kv.Key.Pid)).ThenBy(kv => kv.Key.Pid)
            .ThenBy(kv => threadOrder.GetValueOrDefault(kv.Key, kv.Key.Tid)).ThenBy(kv => kv.Key.Tid)
            .Select(kv => new Timeline.Row(kv.Key.Pid, processNames.GetValueOrDefault(kv.Key.Pid) ?? $"pid {kv.Key.Pid}",
                kv.Key.Tid, threadNames.GetValueOrDefault(kv.Key) ?? $"tid {kv.Key.Tid}", kv.Value.OrderBy(b => b.StartUs).ToList()))
            .ToList();
        var other = root.ValueKind == JsonValueKind.Object && root.TryGetProperty("otherData", out var o) && o.ValueKind == JsonValueKind.Object ? o : default;
        var title = Text(other, "method") is { } method
            ? $"update of '{Text(other, "checkpoint")}' · {method} · {Text(other, "ranks") ?? "?"} ranks"
            : Path.GetFileName(path);
        return double.IsFinite(start)
            ? new Timeline(title, Text(other, "busiest"), rows, start, end)
            : new Timeline(title, null, rows, 0, 0);
    }

    private static string? Text(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static double? Number(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;

    private static long? Long(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out var l) ? l : null;

    private static int? Int(JsonElement e, string name) => Long(e, name) is { } l && l is >= int.MinValue and <= int.MaxValue ? (int)l : null;
}
