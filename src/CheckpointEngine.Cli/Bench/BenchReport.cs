using CheckpointEngine.Hosting;
using System.Globalization;
using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// What one <c>ckpt-engine bench</c> run measured, and its three renderings: a table for the terminal
/// (here), markdown for the README (BenchReport.Markdown.cs) and one JSON document (BenchReport.Json.cs).
/// </summary>
/// <param name="RankPeaksSampled">Whether each rank process's VmHWM could be sampled (else only this process's is known).</param>
/// <param name="HostPeakPerConfiguration">Whether this process's VmHWM was reset before each configuration (else it is the run's peak so far).</param>
internal sealed partial record BenchReport(MachineInfo Machine, DateTimeOffset Date, BenchSettings Settings, IReadOnlyList<Baseline> Baselines,
    IReadOnlyList<ConfigurationResult> Configurations, bool RankPeaksSampled, bool HostPeakPerConfiguration)
{
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    /// <summary>The cases of a method in the order they are measured (null: a method with one row).</summary>
    private static readonly string?[] Cases = [null, RegistrationBench.Fresh, RegistrationBench.Pooled, RegistrationBench.InPlace, CollectiveBench.SharedMemory, CollectiveBench.TcpChain, QuantizeBench.OneThread, QuantizeBench.AllThreads];

    /// <summary>The torch.distributed peer's measurements, per (ranks, size), where a Python with torch was found.</summary>
    public IReadOnlyList<TorchPeer.Result> Peers { get; init; } = [];

    /// <summary>The peer measured with the configuration's ranks and size, if any.</summary>
    public TorchPeer.Result? PeerFor(ConfigurationResult c) => BenchSettings.UpdateMethods.Contains(c.Method, StringComparer.Ordinal)
        ? Peers.FirstOrDefault(p => p.Ranks == c.Ranks && p.Size == c.Size) : null;

    public Baseline? BaselineFor(ConfigurationResult c) => Baselines.FirstOrDefault(b => b.Key == BaselineKey(c));

    /// <summary>
    /// An update row's baseline with as many copies or connections at once as it has ranks, or null: on one host every worker copies at
    /// once (memcpy); over TCP only ranks on separate hosts each read (on one host the lowest rank reads for all, one stream).
    /// </summary>
    public Baseline? AtOnceFor(ConfigurationResult c) =>
        c.Case is null && c.Ranks > 1 && (BaselineKey(c) == Baseline.Memcpy || Settings.SeparateHosts)
            ? Baselines.FirstOrDefault(b => b.Key == Baseline.AtOnce(BaselineKey(c), c.Ranks))
            : null;

    /// <summary>With ranks on separate hosts every update crosses loopback TCP: TCP bounds it; else as <see cref="Baseline.For"/>.</summary>
    private string BaselineKey(ConfigurationResult c) =>
        Settings.SeparateHosts && c.Case is null && c.Ranks > 1 && BenchSettings.UpdateMethods.Contains(c.Method) ? Baseline.Tcp : Baseline.For(c.Method, c.Case);

    /// <summary>The command line that repeats this run.</summary>
    public string CommandLine => string.Join(' ', new[]
    {
        "./ckpt-engine bench",
        "--ranks " + string.Join(',', Settings.Ranks),
        "--size " + string.Join(',', Settings.Sizes.Select(BenchSettings.SizeLabel)),
        "--method " + string.Join(',', Settings.Methods),
        Settings.BucketSize is { } b ? "--bucket-size " + BenchSettings.SizeLabel(b) : null,
        "--repeat " + Settings.Repeat.ToString(Invariant),
        Settings.Model is { } m ? "--model " + m : null,
        Settings.Device == Runtime.DeviceKind.Cuda ? "--device cuda" : null,
        Settings.Prepare ? null : "--no-prepare",
        Settings.SeparateHosts ? "--separate-hosts" : null,
    }.Where(s => s is not null));

    public string MachineLine =>
        $"{Machine.Cores} cores ({Machine.Cpu}), {ByteSize.Format(Machine.MemoryBytes)} memory, {Machine.Os} ({Machine.Kernel}), {Machine.Dotnet}";

    public string DateText => Date.UtcDateTime.ToString("yyyy-MM-dd HH:mm 'UTC'", Invariant);

    /// <summary>The human report: machine, baselines, one row per configuration, seconds per GiB.</summary>
    public void WriteText(TextWriter w)
    {
        ArgumentNullException.ThrowIfNull(w);
        w.WriteLine(CommandLine);
        w.WriteLine($"machine: {MachineLine}; {DateText}");
        w.WriteLine();
        w.Write(BaselineTable().Text());
        foreach (var note in BaselineNotes)
        {
            w.WriteLine(note);
        }
        w.WriteLine();
        if (Peers.Count > 0)
        {
            w.WriteLine("torch.distributed peer (bench/torch_peer.py): " + PeerNote);
            w.Write(PeerTable().Text());
            w.WriteLine();
        }
        if (HasUpdates)
        {
            w.WriteLine($"updates: median of {Settings.Repeat} after a warm-up update in the same rank processes (the warm-up is 'first s'{(Settings.Prepare ? ", after a prepare: 'prepare s'" : ", unprepared")}); GB/s per worker = bytes each worker received / update seconds; stage sums are the largest over the ranks and overlap");
        }
        foreach (var note in MethodNotes)
        {
            w.WriteLine(note);
        }
        w.Write(ConfigurationTable(markdown: false).Text());
        w.WriteLine(PeakNote);
        w.WriteLine();
        w.WriteLine("seconds per GiB (median update seconds / GiB per worker):");
        w.Write(ScalingTable().Text());
    }

    /// <summary>Whether the run has whole updates (broadcast, p2p), not only registration and the collective.</summary>
    private bool HasUpdates => Settings.Methods.Any(m => BenchSettings.UpdateMethods.Contains(m, StringComparer.Ordinal));

    private string PeakNote => RankPeaksSampled
        ? $"peak RSS: VmHWM of each rank process (sampled every {BenchRunner.SampleInterval.TotalMilliseconds:F0} ms), and of the bench process, which {BenchProcessRole}{(HostPeakPerConfiguration ? " (reset per configuration)" : " (peak of the run so far)")}"
        : $"peak RSS: rank processes could not be sampled; only the bench process's VmHWM (it {BenchProcessRole}) is shown";

    private string BenchProcessRole => (HasUpdates, Settings.Methods.Contains(BenchSettings.Registration) || Settings.Methods.Contains(BenchSettings.Quantize)) switch
    {
        (true, true) => "hosts the reference worker and does the registrations and quantizations",
        (false, true) => "does the registrations and quantizations",
        _ => "hosts the reference worker",
    };

    private Table BaselineTable()
    {
        var t = new Table([$"baseline ({ByteSize.Format(Baselines.Count > 0 ? Baselines[0].Bytes : 0)}, best of 3)", "seconds", "GB/s"], [false, true, true]);
        foreach (var b in Baselines)
        {
            t.Add(b.Label, F(b.Seconds, 4), F(b.Gbps, 2));
        }
        return t;
    }

    private string PeerNote =>
        $"gloo broadcasts of the same checkpoint from its owners (split as the ranks split it) into every rank's model, "
        + $"per tensor and in buckets of {ByteSize.Format(Peers[0].BucketSize)}, between as many processes; the median of {Settings.Repeat} after a warm-up, GB/s per model";

    private Table PeerTable()
    {
        var t = new Table(["torch.distributed (gloo)", "ranks", "size", "per model", "per tensor s", "GB/s", "bucketed s", "GB/s", "first s"],
            [false, true, false, true, true, true, true, true, true]);
        foreach (var p in Peers)
        {
            t.Add("broadcast", p.Ranks.ToString(Invariant), BenchSettings.SizeLabel(p.Size), ByteSize.Format(p.Bytes), F(p.PerTensor, 3), F(p.PerTensorGbps, 2),
                F(p.Bucketed, 3), F(p.BucketedGbps, 2), $"{F(p.PerTensorFirst, 3)} / {F(p.BucketedFirst, 3)}");
        }
        return t;
    }

    /// <summary>"2.1× / 1.8×": GB/s per worker over the peer's per tensor and bucketed GB/s per model.</summary>
    private string PeerRatio(ConfigurationResult c) => PeerFor(c) is { } p ? $"{F(c.GbpsPerWorker / p.PerTensorGbps, 2)}× / {F(c.GbpsPerWorker / p.BucketedGbps, 2)}×" : "–";

    private IEnumerable<string> BaselineNotes => Baselines.Where(b => b.Note is not null).Select(b => $"{b.Label}: {b.Note}");

    /// <summary>What the rows of the methods that are not whole updates measure, for those in this run.</summary>
    private IEnumerable<string> MethodNotes
    {
        get
        {
            var repeats = $"the median (min–max) of {Settings.Repeat} after a warm-up one ('first s')";
            if (Settings.Methods.Contains(BenchSettings.Registration))
            {
                yield return $"registration: the checkpoint registered into host memory by the bench process from a warm page cache with {Environment.ProcessorCount} copy threads, once per size, {repeats}: "
                    + $"{RegistrationBench.Fresh} buffers (page faults included), {RegistrationBench.Pooled} buffers (the RL loop) and {RegistrationBench.InPlace} (a tmpfs copy mapped, nothing copied); "
                    + "per worker is the tensor bytes; compared with single-thread memcpy";
            }
            if (Settings.Methods.Contains(BenchSettings.Quantize))
            {
                yield return $"quantize: the checkpoint's BF16 linear weights quantized to block-scaled FP8 (E4M3, 128x128 blocks) by the bench process, read from the files' mappings (warm page cache) into buffers allocated once, once per size, {repeats}: "
                    + $"on {QuantizeBench.OneThread} and on {QuantizeBench.AllThreads} ({Environment.ProcessorCount}); per worker is the BF16 input bytes; compared with single-thread memcpy";
            }
            if (Settings.Methods.Contains(BenchSettings.Collective))
            {
                yield return "collective: a raw broadcast of one --size buffer (a /dev/shm segment, as the host backend's device buffers are) from rank 0 to the other rank processes, "
                    + $"{repeats}, each timed from a barrier to the slowest receiver; {CollectiveBench.SharedMemory}: all ranks on one host, receivers copy out of rank 0's buffer, compared with single-thread memcpy; "
                    + $"{CollectiveBench.TcpChain}: each rank posing as its own host, the bytes relayed rank to rank over loopback, compared with one loopback TCP connection";
            }
        }
    }

    private Table ConfigurationTable(bool markdown)
    {
        // The peer's column only where it was measured, the prepare's only where the ranks prepared.
        var peers = Peers.Count > 0;
        var prepared = Configurations.Any(c => c.Prepared is not null);
        var atOnce = Configurations.Any(c => AtOnceFor(c) is not null);
        var t = new Table(["method", "ranks", "size", "per worker", "seconds (min–max)", "GB/s per worker", "vs baseline", .. atOnce ? ["vs N at once"] : System.Array.Empty<string>(), .. peers ? ["vs torch (tensor / bucketed)"] : System.Array.Empty<string>(),
            "first s", .. prepared ? ["prepare s"] : System.Array.Empty<string>(), "buckets", "stage s", "broadcast s", "reload s", "peak RSS per rank", "bench process"],
            [false, true, false, true, true, true, false, .. atOnce ? [false] : System.Array.Empty<bool>(), .. peers ? [false] : System.Array.Empty<bool>(), true, .. prepared ? [true] : System.Array.Empty<bool>(), true, true, true, true, true, true]);
        foreach (var c in Ordered)
        {
            var s = c.Seconds;
            var baseline = BaselineFor(c);
            var ratio = baseline is null ? "" : $"{F(c.GbpsPerWorker / baseline.Gbps, 2)}× {(baseline.Key == Baseline.Tcp ? "TCP" : "memcpy")}";
            t.Add([c.Label, c.Ranks.ToString(Invariant), BenchSettings.SizeLabel(c.Size), ByteSize.Format(c.Bytes),
                $"{F(s.Median, 3)} ({F(s.Min, 3)}–{F(s.Max, 3)})", F(c.GbpsPerWorker, 2), ratio,
                .. atOnce ? [AtOnceFor(c) is { } n ? $"{F(c.GbpsPerWorker / n.Gbps, 2)}× {c.Ranks} at once" : "–"] : System.Array.Empty<string>(), .. peers ? [PeerRatio(c)] : System.Array.Empty<string>(),
                F(c.First?.Seconds ?? double.NaN, 3), .. prepared ? [c.Prepared is { } p ? F(p.Seconds, 3) : "–"] : System.Array.Empty<string>(), c.Buckets > 0 ? c.Buckets.ToString(Invariant) : "–",
                F(c.Stage, 3), F(c.Broadcast, 3), F(c.Reload, 3), RankPeakText(c, markdown), c.HostPeak is { } h ? ByteSize.Format(h) : "–"]);
        }
        return t;
    }

    private static string RankPeakText(ConfigurationResult c, bool markdown)
    {
        if (c.RankPeaks.Count == 0)
        {
            return "–";
        }
        var peaks = c.RankPeaks.OrderBy(p => p.Key).Select(p => p.Value).ToList();
        return peaks.Count <= 4
            ? string.Join(markdown ? " / " : "/", peaks.Select(p => MiB(p))) + " MiB"
            : $"max {MiB(peaks.Max())} MiB";
    }

    /// <summary>
    /// Median seconds per GiB: a row per (method and case, size), a column per rank count (registration, which
    /// runs in the bench process, counts as 1 rank).
    /// </summary>
    private Table ScalingTable()
    {
        var ranks = Settings.Ranks.Concat(Configurations.Select(c => c.Ranks)).Distinct().Order().ToList();
        var t = new Table(["method", "size", .. ranks.Select(r => r == 1 ? "1 rank" : $"{r} ranks")], [false, false, .. ranks.Select(_ => true)]);
        var rows = Configurations.Select(c => (c.Method, c.Case, c.Label)).Distinct()
            .OrderBy(m => MethodIndex(m.Method)).ThenBy(m => CaseIndex(m.Case));
        foreach (var (method, @case, label) in rows)
        {
            foreach (var size in Settings.Sizes.Order())
            {
                var cells = ranks.Select(r => Configurations.FirstOrDefault(c => c.Method == method && c.Case == @case && c.Size == size && c.Ranks == r) is { } c ? F(c.SecondsPerGiB, 3) : "–");
                t.Add([label, BenchSettings.SizeLabel(size), .. cells]);
            }
        }
        return t;
    }

    /// <summary>In the order of --method, then size and ranks; a method's cases in the order they are measured.</summary>
    private IEnumerable<ConfigurationResult> Ordered => Configurations
        .OrderBy(c => MethodIndex(c.Method)).ThenBy(c => c.Size).ThenBy(c => c.Ranks).ThenBy(c => CaseIndex(c.Case));

    private int MethodIndex(string method) => Settings.Methods.ToList().IndexOf(method);

    private static int CaseIndex(string? @case) => System.Array.IndexOf(Cases, @case);

    private static string F(double v, int digits) => double.IsNaN(v) ? "–" : v.ToString("F" + digits.ToString(Invariant), Invariant);

    private static string MiB(long bytes) => (bytes / (double)(1L << 20)).ToString("F0", Invariant);
}
