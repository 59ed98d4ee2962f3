using System.Diagnostics;
using System.Diagnostics.Metrics;
using CheckpointEngine.Runtime.Collectives;

namespace CheckpointEngine.Server;

/// <summary>
/// What a <see cref="ParameterServer"/> records of its updates in .NET's own conventions: a <see cref="Meter"/>
/// (per server, so a host exports its own server's figures only) with the stage histograms an operator charts,
/// and activities of the shared <see cref="Source"/> per update and per bucket stage. Hosts export them
/// (OpenTelemetry: Prometheus, OTLP); with no listener they cost next to nothing. Also keeps the last
/// update's report, for status displays.
/// </summary>
public sealed class UpdateTelemetry : IDisposable
{
    /// <summary>The name of the meter and of the activity source.</summary>
    public const string Name = "CheckpointEngine";

    /// <summary>Activities: <c>update</c> (tags checkpoint, method, rank, bytes) with children <c>h2d</c>, <c>broadcast</c>, <c>reload</c> per bucket.</summary>
    public static readonly ActivitySource Source = new(Name);

    /// <summary>Seconds, from a millisecond bucket stage to a many-minute update.</summary>
    private static readonly double[] SecondsBounds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

    /// <summary>The telemetry of the update running in this async flow (agreements are recorded through it).</summary>
    private static readonly AsyncLocal<UpdateTelemetry?> Running = new();

    private readonly KeyValuePair<string, object?> _rank;
    private readonly Histogram<double> _duration;
    private readonly Histogram<double> _stage;
    private readonly Histogram<double> _agreement;
    private readonly Counter<long> _updates;
    private readonly Counter<long> _failures;
    private readonly Counter<long> _bytes;
    private readonly Counter<long> _buckets;
    private volatile LastUpdate? _last;

    internal UpdateTelemetry(ParameterServer ps)
    {
        _rank = new("rank", ps.Rank);
        Meter = new Meter(Name);
        InstrumentAdvice<double> seconds = new() { HistogramBucketBoundaries = SecondsBounds };
        _duration = Meter.CreateHistogram("ckpt_engine.update.duration", "s", "Wall time of successful updates on this rank.", advice: seconds);
        _stage = Meter.CreateHistogram("ckpt_engine.bucket.stage.duration", "s", "Time of one bucket's stage on this rank (stage: h2d, broadcast, reload).", advice: seconds);
        _agreement = Meter.CreateHistogram("ckpt_engine.agreement.wait", "s", "Time a rank waits for the members of an update to agree on a step (the slowest member's lag).", advice: seconds);
        _updates = Meter.CreateCounter<long>("ckpt_engine.updates", description: "Updates that completed on this rank.");
        _failures = Meter.CreateCounter<long>("ckpt_engine.update.failures", description: "Updates that failed on this rank, by cause.");
        _bytes = Meter.CreateCounter<long>("ckpt_engine.update.bytes", "By", "Tensor bytes delivered into the worker by updates.");
        _buckets = Meter.CreateCounter<long>("ckpt_engine.update.buckets", description: "Buckets moved by updates.");
        Meter.CreateObservableGauge("ckpt_engine.update.in_progress", () => new Measurement<int>(ps.IsUpdating ? 1 : 0, _rank), description: "1 while an update runs on this rank.");
        Meter.CreateObservableGauge("ckpt_engine.update.last_duration", () => new Measurement<double>(_last?.Report.Duration.TotalSeconds ?? 0, _rank), "s", "Wall time of the last successful update.");
        Meter.CreateObservableGauge("ckpt_engine.registered.checkpoints", () => new Measurement<int>(ps.Registry.Checkpoints.Count, _rank), description: "Checkpoints registered on this rank.");
        Meter.CreateObservableGauge("ckpt_engine.registered.bytes", () => new Measurement<long>(ps.Registry.Checkpoints.Sum(c => c.TensorBytes), _rank), "By", "Tensor bytes registered on this rank.");
        Meter.CreateObservableGauge("ckpt_engine.registered.buffer_bytes", () => new Measurement<long>(ps.Registry.Checkpoints.Sum(c => c.BufferBytes), _rank), "By",
            "Host memory the registered buffers span, padding included.");
    }

    public Meter Meter { get; }

    /// <summary>The last successful update on this rank and its method, or null.</summary>
    public LastUpdate? Last => _last;

    /// <summary>Opens an update: its activity, and the scope agreements are recorded in.</summary>
    /// <param name="prepare">A prepare (see <see cref="ParameterServer.PrepareAsync"/>): an activity of its own, and nothing in the update metrics.</param>
    internal Scope Start(string checkpoint, UpdateMode mode, bool prepare = false) => new(this, checkpoint, mode, prepare);

    /// <summary>Records the time an agreement waited, for the update running in this flow (if any).</summary>
    internal static void AgreementWaited(TimeSpan wait) => Running.Value?._agreement.Record(wait.TotalSeconds, Running.Value._rank);

    /// <summary>A short cause for the failures counter: the step that failed, as the agreement names it, or the kind of error.</summary>
    internal static string Cause(Exception e)
    {
        var message = e.Message;
        return e switch
        {
            OperationCanceledException => "cancelled",
            ServerBusyException => "busy",
            _ when e is CollectiveException || e.InnerException is CollectiveException => message.Contains("deadline", StringComparison.Ordinal) ? "timeout" : "collective",
            _ when message.Contains("reloading bucket", StringComparison.Ordinal) => "reload",
            _ when message.Contains("reading bucket", StringComparison.Ordinal) => "p2p_read",
            _ when message.Contains("staging bucket", StringComparison.Ordinal) || message.Contains("to its device", StringComparison.Ordinal) => "h2d",
            _ when message.Contains("inference engine", StringComparison.Ordinal) => "engine",
            _ when message.Contains("worker", StringComparison.OrdinalIgnoreCase) => "worker",
            _ when message.Contains("checksum", StringComparison.OrdinalIgnoreCase) || message.Contains("CRC", StringComparison.Ordinal) => "verify",
            _ => "other",
        };
    }

    public void Dispose() => Meter.Dispose();

    /// <summary>The last successful update on a rank.</summary>
    public sealed record LastUpdate(string Method, UpdateReport Report, DateTimeOffset Finished);

    /// <summary>One update, from its start to <see cref="Completed"/> or <see cref="Failed"/>.</summary>
    internal sealed class Scope : IDisposable
    {
        private readonly UpdateTelemetry _owner;
        private readonly UpdateMode _mode;
        private readonly Activity? _activity;
        private readonly UpdateTelemetry? _outer;
        private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
        private readonly bool _prepare;

        public Scope(UpdateTelemetry owner, string checkpoint, UpdateMode mode, bool prepare)
        {
            (_owner, _mode, _prepare) = (owner, mode, prepare);
            _outer = Running.Value;
            Running.Value = prepare ? null : owner;
            _activity = Source.StartActivity(prepare ? "prepare" : "update");
            _activity?.SetTag("checkpoint", checkpoint).SetTag("method", mode.Name).SetTag("rank", owner._rank.Value);
        }

        /// <summary>Records a successful update (its figures, and an activity per bucket stage from its timings) and returns its report.</summary>
        public UpdateReport Completed(UpdateReport report)
        {
            if (_prepare)
            {
                return report;
            }
            var method = new KeyValuePair<string, object?>("method", _mode.Name);
            _owner._duration.Record(report.Duration.TotalSeconds, _owner._rank, method);
            _owner._updates.Add(1, _owner._rank, method);
            _owner._bytes.Add(report.BytesDelivered, _owner._rank, method);
            _owner._buckets.Add(report.Buckets.Count, _owner._rank, method);
            foreach (var b in report.Buckets)
            {
                Stage("h2d", b.Index, b.HostToDeviceStart, b.HostToDeviceEnd);
                Stage("broadcast", b.Index, b.BroadcastStart, b.BroadcastEnd);
                Stage("reload", b.Index, b.ReloadStart, b.ReloadEnd);
            }
            _activity?.SetTag("bytes", report.BytesDelivered).SetTag("buckets", report.Buckets.Count);
            _owner._last = new LastUpdate(_mode.Name, report, DateTimeOffset.UtcNow);
            return report;
        }

        /// <summary>Records a failure; false, so that it can sit in an exception filter and let the exception go on.</summary>
        public bool Failed(Exception e)
        {
            var cause = Cause(e);
            if (_prepare)
            {
                _activity?.SetStatus(ActivityStatusCode.Error, e.Message).SetTag("cause", cause);
                return false;
            }
            _owner._failures.Add(1, _owner._rank, new("method", _mode.Name), new("cause", cause));
            _activity?.SetStatus(ActivityStatusCode.Error, e.Message).SetTag("cause", cause);
            return false;
        }

        public void Dispose()
        {
            _activity?.Dispose();
            Running.Value = _outer;
        }

        private void Stage(string stage, int bucket, TimeSpan start, TimeSpan end)
        {
            if (end <= start)
            {
                return; // This rank had no part in it.
            }
            _owner._stage.Record((end - start).TotalSeconds, _owner._rank, new("stage", stage));
            if (_activity is null)
            {
                return;
            }
            using var child = Source.StartActivity(stage, ActivityKind.Internal, _activity.Context, [new("bucket", bucket)], startTime: _started + start);
            child?.SetEndTime((_started + end).UtcDateTime);
        }
    }
}
