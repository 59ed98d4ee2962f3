using System.Globalization;
using System.Text;
using CheckpointEngine.Server;

namespace CheckpointEngine.Hosting.Api;

/// <summary>
/// The counters behind <c>GET /metrics</c>, written in the Prometheus text format (version 0.0.4).
/// Small enough not to need a metrics library: a few counters, gauges and one histogram.
/// </summary>
internal sealed class ApiMetrics
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>Upper bounds of the update-duration histogram, in seconds (updates take from milliseconds to minutes).</summary>
    private static readonly double[] DurationBounds = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

    private readonly Lock _lock = new();
    private readonly long[] _durationBuckets = new long[DurationBounds.Length];
    private double _durationSum;
    private long _updates;
    private long _failures;
    private long _bytes;
    private long _buckets;
    private double _hostToDevice;
    private double _broadcast;
    private double _reload;
    private double _lastDuration;

    public void RecordUpdate(UpdateReport report)
    {
        var seconds = report.Duration.TotalSeconds;
        lock (_lock)
        {
            _updates++;
            _durationSum += seconds;
            for (var i = 0; i < DurationBounds.Length; i++)
            {
                if (seconds <= DurationBounds[i])
                {
                    _durationBuckets[i]++;
                }
            }
            _bytes += report.BytesDelivered;
            _buckets += report.Buckets.Count;
            _hostToDevice += report.HostToDevice.TotalSeconds;
            _broadcast += report.Broadcast.TotalSeconds;
            _reload += report.Reload.TotalSeconds;
            _lastDuration = seconds;
        }
    }

    public void RecordFailure()
    {
        lock (_lock)
        {
            _failures++;
        }
    }

    /// <summary>The exposition text; the registered-memory gauges are read from the parameter server now.</summary>
    public string Write(ParameterServer ps, bool updating)
    {
        var label = $"rank=\"{ps.Rank}\"";
        var checkpoints = ps.Registry.Checkpoints;
        var text = new StringBuilder();
        void Metric(string name, string type, string help, params (string Labels, double Value)[] samples)
        {
            text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            text.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
            foreach (var (labels, value) in samples)
            {
                text.Append(name).Append('{').Append(labels).Append("} ").Append(Number(value)).Append('\n');
            }
        }
        lock (_lock)
        {
            text.Append("# HELP ckpt_engine_update_duration_seconds Wall time of successful updates on this rank.\n");
            text.Append("# TYPE ckpt_engine_update_duration_seconds histogram\n");
            for (var i = 0; i < DurationBounds.Length; i++)
            {
                text.Append(CultureInfo.InvariantCulture, $"ckpt_engine_update_duration_seconds_bucket{{{label},le=\"{Number(DurationBounds[i])}\"}} {_durationBuckets[i]}\n");
            }
            text.Append(CultureInfo.InvariantCulture, $"ckpt_engine_update_duration_seconds_bucket{{{label},le=\"+Inf\"}} {_updates}\n");
            text.Append(CultureInfo.InvariantCulture, $"ckpt_engine_update_duration_seconds_sum{{{label}}} {Number(_durationSum)}\n");
            text.Append(CultureInfo.InvariantCulture, $"ckpt_engine_update_duration_seconds_count{{{label}}} {_updates}\n");
            Metric("ckpt_engine_last_update_duration_seconds", "gauge", "Wall time of the last successful update.", (label, _lastDuration));
            Metric("ckpt_engine_updates_total", "counter", "Updates that completed on this rank.", (label, _updates));
            Metric("ckpt_engine_update_failures_total", "counter", "Updates that failed on this rank.", (label, _failures));
            Metric("ckpt_engine_update_bytes_total", "counter", "Tensor bytes delivered into the worker by updates.", (label, _bytes));
            Metric("ckpt_engine_update_buckets_total", "counter", "Buckets moved by updates.", (label, _buckets));
            Metric("ckpt_engine_update_stage_seconds_total", "counter", "Time spent in each update stage, summed over buckets.",
                ($"{label},stage=\"h2d\"", _hostToDevice), ($"{label},stage=\"broadcast\"", _broadcast), ($"{label},stage=\"reload\"", _reload));
        }
        Metric("ckpt_engine_update_in_progress", "gauge", "1 while an update runs on this rank.", (label, updating ? 1 : 0));
        Metric("ckpt_engine_registered_checkpoints", "gauge", "Checkpoints registered on this rank.", (label, checkpoints.Count));
        Metric("ckpt_engine_registered_bytes", "gauge", "Tensor bytes registered on this rank.", (label, checkpoints.Sum(c => c.TensorBytes)));
        Metric("ckpt_engine_registered_buffer_bytes", "gauge", "Host memory the registered buffers span, padding included.", (label, checkpoints.Sum(c => c.BufferBytes)));
        return text.ToString();
    }

    private static string Number(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
