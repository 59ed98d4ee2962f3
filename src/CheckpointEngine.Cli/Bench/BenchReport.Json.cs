using System.Text.Json;

namespace CheckpointEngine.Cli.Bench;

/// <summary>The report as one JSON document (snake_case, bytes and seconds as numbers; null where not measured, or not a case of its method).</summary>
internal sealed partial record BenchReport
{
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("date", Date.UtcDateTime);
            w.WriteString("command", CommandLine);
            Machine.WriteJson(w);

            w.WriteStartObject("settings");
            Array(w, "ranks", Settings.Ranks, (w, r) => w.WriteNumberValue(r));
            Array(w, "sizes", Settings.Sizes, (w, s) => w.WriteNumberValue(s));
            Array(w, "methods", Settings.Methods, (w, m) => w.WriteStringValue(m));
            Number(w, "bucket_size", Settings.BucketSize);
            w.WriteNumber("repeat", Settings.Repeat);
            w.WriteString("model", Settings.Model);
            w.WriteString("device", Settings.Device == Runtime.DeviceKind.Cuda ? "cuda" : "host");
            w.WriteEndObject();

            w.WriteStartObject("baselines");
            foreach (var b in Baselines)
            {
                w.WriteStartObject(b.Key);
                w.WriteString("label", b.Label);
                w.WriteNumber("bytes", b.Bytes);
                Number(w, "seconds", b.Seconds);
                Number(w, "gbps", b.Gbps);
                if (b.Note is not null)
                {
                    w.WriteString("note", b.Note);
                }
                w.WriteEndObject();
            }
            w.WriteEndObject();

            w.WriteStartArray("torch_peer");
            foreach (var p in Peers)
            {
                w.WriteStartObject();
                w.WriteNumber("ranks", p.Ranks);
                w.WriteNumber("size", p.Size);
                w.WriteNumber("bytes", p.Bytes);
                w.WriteNumber("bucket_size", p.BucketSize);
                Number(w, "per_tensor_seconds", p.PerTensor);
                Number(w, "per_tensor_first_seconds", p.PerTensorFirst);
                Number(w, "bucketed_seconds", p.Bucketed);
                Number(w, "bucketed_first_seconds", p.BucketedFirst);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartArray("configurations");
            foreach (var c in Ordered)
            {
                WriteConfiguration(w, c);
            }
            w.WriteEndArray();
            w.WriteStartObject("peak_memory");
            w.WriteBoolean("ranks_sampled", RankPeaksSampled);
            w.WriteBoolean("bench_process_per_configuration", HostPeakPerConfiguration);
            w.WriteNumber("sample_interval_ms", BenchRunner.SampleInterval.TotalMilliseconds);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    private void WriteConfiguration(Utf8JsonWriter w, ConfigurationResult c)
    {
        var baseline = BaselineFor(c);
        w.WriteStartObject();
        w.WriteString("method", c.Method);
        w.WriteString("case", c.Case);
        w.WriteNumber("ranks", c.Ranks);
        w.WriteNumber("size", c.Size);
        w.WriteNumber("bytes", c.Bytes);
        w.WriteNumber("repeats", c.Samples.Count);
        w.WriteStartObject("seconds");
        Number(w, "median", c.Seconds.Median);
        Number(w, "min", c.Seconds.Min);
        Number(w, "max", c.Seconds.Max);
        Array(w, "samples", c.Samples, (w, s) => Value(w, s.Seconds));
        w.WriteEndObject();
        Number(w, "first_update_seconds", c.First?.Seconds);
        Number(w, "prepare_seconds", c.Prepared?.Seconds);
        Number(w, "gbps_per_worker", c.GbpsPerWorker);
        w.WriteString("baseline", baseline?.Key);
        Number(w, "ratio_to_baseline", baseline is null ? null : c.GbpsPerWorker / baseline.Gbps);
        var atOnce = AtOnceFor(c);
        w.WriteString("baseline_at_once", atOnce?.Key);
        Number(w, "ratio_to_baseline_at_once", atOnce is null ? null : c.GbpsPerWorker / atOnce.Gbps);
        var peer = PeerFor(c);
        Number(w, "ratio_to_torch_per_tensor", peer is null ? null : c.GbpsPerWorker / peer.PerTensorGbps);
        Number(w, "ratio_to_torch_bucketed", peer is null ? null : c.GbpsPerWorker / peer.BucketedGbps);
        Number(w, "seconds_per_gib", c.SecondsPerGiB);
        w.WriteNumber("buckets", c.Buckets);
        w.WriteNumber("network_bytes_per_rank", c.NetworkBytes);
        w.WriteStartObject("stage_seconds");
        Number(w, "stage", c.Stage);
        Number(w, "broadcast", c.Broadcast);
        Number(w, "reload", c.Reload);
        w.WriteEndObject();
        w.WriteStartObject("peak_rss_bytes");
        w.WriteStartArray("ranks");
        for (var r = 0; r < c.Ranks; r++)
        {
            if (c.RankPeaks.TryGetValue(r, out var p))
            {
                w.WriteNumberValue(p);
            }
            else
            {
                w.WriteNullValue();
            }
        }
        w.WriteEndArray();
        Number(w, "bench_process", c.HostPeak);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void Array<T>(Utf8JsonWriter w, string name, IEnumerable<T> items, Action<Utf8JsonWriter, T> write)
    {
        w.WriteStartArray(name);
        foreach (var item in items)
        {
            write(w, item);
        }
        w.WriteEndArray();
    }

    private static void Number(Utf8JsonWriter w, string name, double? value)
    {
        w.WritePropertyName(name);
        Value(w, value);
    }

    private static void Number(Utf8JsonWriter w, string name, long? value)
    {
        if (value is { } v)
        {
            w.WriteNumber(name, v);
        }
        else
        {
            w.WriteNull(name);
        }
    }

    /// <summary>Rounded to a microsecond (or a thousandth of a GB/s): more digits are noise. NaN and infinities become null.</summary>
    private static void Value(Utf8JsonWriter w, double? value)
    {
        if (value is { } v && double.IsFinite(v))
        {
            w.WriteNumberValue(Math.Round(v, 6));
        }
        else
        {
            w.WriteNullValue();
        }
    }
}
