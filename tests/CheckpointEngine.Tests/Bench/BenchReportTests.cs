using System.Text.Json;
using CheckpointEngine.Cli.Bench;

namespace CheckpointEngine.Tests.Bench;

/// <summary>The three renderings of a bench report, from synthetic results: the figures and where they go.</summary>
public sealed class BenchReportTests
{
    private const long MiB = 1L << 20;
    private const long GiB = 1L << 30;

    private static ResultLine Line(string method, double seconds, long bytes, int update = 0) =>
        new(0, method, bytes, seconds, 4, 0.1, 0.2, 0.3, update);

    /// <summary>Broadcast and P2P at 256 MiB and 1 GiB on 1 and 2 ranks; seconds grow with size and ranks.</summary>
    private static BenchReport Report(bool ranksSampled = true)
    {
        var settings = new BenchSettings([1, 2], [256 * MiB, GiB], ["broadcast", "p2p"], 256 * MiB, 3);
        var configurations = new List<ConfigurationResult>();
        foreach (var method in settings.Methods)
        {
            foreach (var size in settings.Sizes)
            {
                foreach (var ranks in settings.Ranks)
                {
                    var s = size / (double)GiB * ranks * (method == "p2p" ? 2 : 1); // Seconds per GiB: ranks × (2 for p2p).
                    var peaks = ranksSampled ? Enumerable.Range(0, ranks).ToDictionary(r => r, r => (300 + r) * MiB) : new Dictionary<int, long>();
                    configurations.Add(new ConfigurationResult(method, ranks, size, size, Line(method, 10 * s, size),
                        [Line(method, s * 1.1, size, 1), Line(method, s, size, 2), Line(method, s * 0.9, size, 3)], peaks, 900 * MiB));
                }
            }
        }
        Baseline B(string key, string label, double seconds) => new(key, label, GiB, seconds);
        return new BenchReport(new MachineInfo(2, 24 * GiB, "Test CPU", "Test OS 1", "Linux 6.1", ".NET 10.0.0"),
            new DateTimeOffset(2025, 3, 4, 5, 6, 0, TimeSpan.Zero), settings,
            [B(Baseline.Memcpy, "memcpy, 1 thread", GiB / 10e9), B(Baseline.MemcpyAllThreads, "memcpy, 2 threads", GiB / 16e9),
             B(Baseline.SharedMemory, "shared memory, 2 processes", GiB / 8e9) with { Note = "copy-out" }, B(Baseline.Tcp, "TCP loopback, 1 connection", GiB / 4e9)],
            configurations, ranksSampled, HostPeakPerConfiguration: true);
    }

    [Fact]
    public void TorchPeer_GetsItsTable_AndEveryUpdateRowItsRatio()
    {
        // The peer at 2 ranks × 1 GiB: per tensor 4 s, bucketed 2 s for the GiB per model.
        var report = Report() with { Peers = [new TorchPeer.Result(2, GiB, GiB, 4.0, 5.0, 2.0, 3.0, 256 * MiB)] };
        var markdown = report.ToMarkdown();
        Assert.Contains("| broadcast | 2 | 1GiB | 1.00 GiB | 4.000 | 0.27 | 2.000 | 0.54 | 5.000 / 3.000 |", markdown, StringComparison.Ordinal);
        // broadcast at 2 ranks × 1 GiB takes 2 s: twice the per-tensor peer's GB/s, as fast as the bucketed one.
        Assert.Contains("| broadcast | 2 | 1GiB | 1.00 GiB | 2.000 (1.800–2.200) | 0.54 | 0.05× memcpy | 2.00× / 1.00× |", markdown, StringComparison.Ordinal);
        Assert.Contains("| broadcast | 1 | 1GiB | 1.00 GiB | 1.000 (0.900–1.100) | 1.07 | 0.11× memcpy | – |", markdown, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(report.ToJson());
        var peer = Assert.Single(doc.RootElement.GetProperty("torch_peer").EnumerateArray());
        Assert.Equal(4.0, peer.GetProperty("per_tensor_seconds").GetDouble());
        var row = doc.RootElement.GetProperty("configurations").EnumerateArray()
            .Single(c => c.GetProperty("method").GetString() == "broadcast" && c.GetProperty("ranks").GetInt32() == 2 && c.GetProperty("size").GetInt64() == GiB);
        Assert.Equal((2.0, 1.0), (row.GetProperty("ratio_to_torch_per_tensor").GetDouble(), row.GetProperty("ratio_to_torch_bucketed").GetDouble()));
        Assert.DoesNotContain("vs torch", Report().ToMarkdown(), StringComparison.Ordinal);
    }

    [Fact]
    public void Json_ConfigurationFigures()
    {
        using var doc = JsonDocument.Parse(Report().ToJson());
        var root = doc.RootElement;
        Assert.Equal("./ckpt-engine bench --ranks 1,2 --size 256MiB,1GiB --method broadcast,p2p --bucket-size 256MiB --repeat 3", root.GetProperty("command").GetString());
        Assert.Equal(2, root.GetProperty("machine").GetProperty("cores").GetInt32());
        Assert.Equal(10.0, root.GetProperty("baselines").GetProperty(Baseline.Memcpy).GetProperty("gbps").GetDouble(), 3);
        Assert.Equal(256 * MiB, root.GetProperty("settings").GetProperty("bucket_size").GetInt64());
        var configs = root.GetProperty("configurations").EnumerateArray().ToList();
        Assert.Equal(8, configs.Count);
        var p2p = configs.Single(c => c.GetProperty("method").GetString() == "p2p" && c.GetProperty("ranks").GetInt32() == 2 && c.GetProperty("size").GetInt64() == GiB);
        var seconds = p2p.GetProperty("seconds");
        Assert.Equal(4.0, seconds.GetProperty("median").GetDouble(), 6);
        Assert.Equal(3.6, seconds.GetProperty("min").GetDouble(), 6);
        Assert.Equal(4.4, seconds.GetProperty("max").GetDouble(), 6);
        Assert.Equal(40.0, p2p.GetProperty("first_update_seconds").GetDouble(), 6);
        Assert.Equal(GiB / 4.0 / 1e9, p2p.GetProperty("gbps_per_worker").GetDouble(), tolerance: 1e-6); // Rounded to 6 places.
        Assert.Equal(Baseline.Tcp, p2p.GetProperty("baseline").GetString());
        Assert.Equal(GiB / 4.0 / 4e9, p2p.GetProperty("ratio_to_baseline").GetDouble(), tolerance: 1e-6);
        Assert.Equal(4.0, p2p.GetProperty("seconds_per_gib").GetDouble(), 6);
        Assert.Equal(0.2, p2p.GetProperty("stage_seconds").GetProperty("broadcast").GetDouble(), 6);
        Assert.Equal([300 * MiB, 301 * MiB], p2p.GetProperty("peak_rss_bytes").GetProperty("ranks").EnumerateArray().Select(e => e.GetInt64()));
        Assert.Equal(Baseline.Memcpy, configs[0].GetProperty("baseline").GetString());
    }

    [Fact]
    public void Prepared_ItsSecondsBesideTheFirstUpdate_AndTheCommandSaysWhenTheRunDidNotPrepare()
    {
        var report = Report();
        var c = report.Configurations[0];
        report = report with { Configurations = [c with { Prepared = Line(c.Method, 0.125, 0) with { Prepare = true } }] };
        Assert.Contains("| first s | prepare s |", report.ToMarkdown(), StringComparison.Ordinal);
        Assert.Contains("| 2.500 | 0.125 | 4 |", report.ToMarkdown(), StringComparison.Ordinal); // first s, prepare s, buckets.
        using (var doc = JsonDocument.Parse(report.ToJson()))
        {
            Assert.Equal(0.125, doc.RootElement.GetProperty("configurations")[0].GetProperty("prepare_seconds").GetDouble());
        }
        Assert.DoesNotContain("--no-prepare", report.CommandLine, StringComparison.Ordinal);
        Assert.EndsWith(" --no-prepare", (report with { Settings = report.Settings with { Prepare = false } }).CommandLine, StringComparison.Ordinal);
        Assert.Contains("unprepared (`--no-prepare`", (report with { Settings = report.Settings with { Prepare = false } }).ToMarkdown(), StringComparison.Ordinal);
    }

    [Fact]
    public void AtOnce_RowsOfSeveralRanks_AreAlsoComparedWithAsManyStreamsAtOnce()
    {
        var report = Report();
        Assert.DoesNotContain("vs N at once", report.ToMarkdown(), StringComparison.Ordinal); // Not measured: no column.
        // Two threads at once copy 5 GB/s each, two connections at once carry 2 GB/s each.
        report = report with { Baselines = [.. report.Baselines, new Baseline(Baseline.AtOnce(Baseline.Memcpy, 2), "memcpy, 2 threads at once (per thread)", GiB, GiB / 5e9),
            new Baseline(Baseline.AtOnce(Baseline.Tcp, 2), "TCP loopback, 2 connections at once (per connection)", GiB, GiB / 2e9)] };
        var md = report.ToMarkdown();
        Assert.Contains("| broadcast | 2 | 1GiB | 1.00 GiB | 2.000 (1.800–2.200) | 0.54 | 0.05× memcpy | 0.11× 2 at once |", md, StringComparison.Ordinal);
        Assert.Contains("| p2p | 2 | 1GiB | 1.00 GiB | 4.000 (3.600–4.400) | 0.27 | 0.07× TCP | – |", md, StringComparison.Ordinal); // One host: one rank reads for all.
        Assert.Contains("| broadcast | 1 | 1GiB | 1.00 GiB | 1.000 (0.900–1.100) | 1.07 | 0.11× memcpy | – |", md, StringComparison.Ordinal);
        // Ranks on separate hosts: every rank reads over TCP, every row against TCP and as many connections at once.
        report = report with { Settings = report.Settings with { SeparateHosts = true } };
        Assert.Contains("| broadcast | 2 | 1GiB | 1.00 GiB | 2.000 (1.800–2.200) | 0.54 | 0.13× TCP | 0.27× 2 at once |", report.ToMarkdown(), StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(report.ToJson());
        var p2p = doc.RootElement.GetProperty("configurations").EnumerateArray()
            .Single(c => c.GetProperty("method").GetString() == "p2p" && c.GetProperty("ranks").GetInt32() == 2 && c.GetProperty("size").GetInt64() == GiB);
        Assert.Equal(Baseline.AtOnce(Baseline.Tcp, 2), p2p.GetProperty("baseline_at_once").GetString());
        Assert.Equal(GiB / 4.0 / 2e9, p2p.GetProperty("ratio_to_baseline_at_once").GetDouble(), tolerance: 1e-6); // Rounded to 6 places.
    }

    [Fact]
    public void Json_UnmeasuredFigures_AreNull()
    {
        var report = Report(ranksSampled: false);
        var c = report.Configurations[0];
        report = report with { Configurations = [c with { First = null, Samples = [c.Samples[0] with { Stage = double.NaN }] }] };
        using var doc = JsonDocument.Parse(report.ToJson());
        var only = doc.RootElement.GetProperty("configurations")[0];
        Assert.Equal(JsonValueKind.Null, only.GetProperty("first_update_seconds").ValueKind);
        Assert.Equal(JsonValueKind.Null, only.GetProperty("prepare_seconds").ValueKind);
        Assert.Equal(JsonValueKind.Null, only.GetProperty("stage_seconds").GetProperty("stage").ValueKind);
        Assert.Equal(JsonValueKind.Null, only.GetProperty("peak_rss_bytes").GetProperty("ranks")[0].ValueKind);
        Assert.False(doc.RootElement.GetProperty("peak_memory").GetProperty("ranks_sampled").GetBoolean());
    }

    [Fact]
    public void Markdown_MachineDateTablesAndScaling()
    {
        var md = Report().ToMarkdown();
        Assert.StartsWith("Measured with `./ckpt-engine bench --ranks 1,2", md);
        Assert.Contains("on 2025-03-04 05:06 UTC: 2 cores (Test CPU), 24.00 GiB memory, Test OS 1 (Linux 6.1), .NET 10.0.0.", md);
        Assert.DoesNotContain("\n#", md); // Pasted under a README heading: no headings of its own.
        Assert.Contains("| memcpy, 1 thread | 0.1074 | 10.00 |", md);
        Assert.Contains("| broadcast | 2 | 1GiB | 1.00 GiB | 2.000 (1.800–2.200) | 0.54 | 0.05× memcpy | 20.000 | 4 | 0.100 | 0.200 | 0.300 | 300 / 301 MiB | 900.0 MiB |", md);
        Assert.Contains("| p2p | 1 | 256MiB | 256.0 MiB | 0.500 (0.450–0.550) | 0.54 | 0.13× TCP |", md);
        // Seconds per GiB: a row per method and size, a column per rank count.
        Assert.Contains("| method | size | 1 rank | 2 ranks |", md);
        Assert.Contains("| broadcast | 256MiB | 1.000 | 2.000 |", md);
        Assert.Contains("| p2p | 1GiB | 2.000 | 4.000 |", md);
        Assert.Contains("Shared memory, 2 processes: copy-out.", md);
    }

    [Fact]
    public void Text_RowsInMethodSizeRanksOrder()
    {
        var w = new StringWriter();
        Report(ranksSampled: false).WriteText(w);
        var lines = w.ToString().Split('\n');
        var rows = lines.Where(l => l.StartsWith("broadcast ", StringComparison.Ordinal) || l.StartsWith("p2p ", StringComparison.Ordinal)).ToList();
        Assert.Equal(8 + 4, rows.Count); // Eight configurations, then four scaling rows.
        Assert.Matches(@"^broadcast\s+1\s+256MiB\s+256\.0 MiB\s+0\.250 \(0\.225–0\.275\)\s+1\.07\s+0\.11× memcpy", rows[0]);
        Assert.Matches(@"^broadcast\s+2\s+256MiB", rows[1]);
        Assert.Matches(@"^broadcast\s+1\s+1GiB", rows[2]);
        Assert.Matches(@"^p2p\s+2\s+1GiB", rows[7]);
        Assert.Contains(lines, l => l.StartsWith("peak RSS: rank processes could not be sampled", StringComparison.Ordinal));
    }

    /// <summary>Registration (three cases, once per size, 1 rank) and the collective (two cases, 2 ranks) at 1 GiB, at the given GB/s.</summary>
    private static BenchReport CaseReport()
    {
        var settings = new BenchSettings([2], [GiB], ["registration", "collective"], null, 2);
        ConfigurationResult Row(string method, string @case, int ranks, double gbps)
        {
            var s = GiB / (gbps * 1e9);
            var peaks = ranks == 1 ? new Dictionary<int, long>() : Enumerable.Range(0, ranks).ToDictionary(r => r, r => 1100 * MiB);
            return new ConfigurationResult(method, ranks, GiB, GiB, Bare(Line(method, 2 * s, GiB)), [Bare(Line(method, s, GiB, 1)), Bare(Line(method, s, GiB, 2))],
                peaks, 700 * MiB, @case);
        }
        static ResultLine Bare(ResultLine l) => l with { Buckets = 0, Stage = double.NaN, Broadcast = double.NaN, Reload = double.NaN }; // Only bytes and seconds.
        var baseline = Report();
        return baseline with
        {
            Settings = settings,
            Configurations =
            [
                Row("collective", CollectiveBench.TcpChain, 2, 2),
                Row("collective", CollectiveBench.SharedMemory, 2, 5),
                Row("registration", RegistrationBench.InPlace, 1, 40),
                Row("registration", RegistrationBench.Pooled, 1, 8),
                Row("registration", RegistrationBench.Fresh, 1, 4),
            ],
        };
    }

    [Fact]
    public void Markdown_CaseRows_InMethodOrder_WithTheirBaselines()
    {
        var md = CaseReport().ToMarkdown();
        var rows = md.Split('\n').Where(l => l.StartsWith("| registration (", StringComparison.Ordinal) || l.StartsWith("| collective (", StringComparison.Ordinal)).ToList();
        Assert.Equal(5 + 5, rows.Count); // Five configurations, then five scaling rows.
        Assert.StartsWith("| registration (fresh) | 1 | 1GiB | 1.00 GiB | 0.268 (0.268–0.268) | 4.00 | 0.40× memcpy | 0.537 | – | – | – | – | – | 700.0 MiB |", rows[0]);
        Assert.StartsWith("| registration (pooled) | 1 | 1GiB | 1.00 GiB | 0.134 (0.134–0.134) | 8.00 | 0.80× memcpy |", rows[1]);
        Assert.StartsWith("| registration (in place) | 1 | 1GiB | 1.00 GiB | 0.027 (0.027–0.027) | 40.00 | 4.00× memcpy |", rows[2]);
        Assert.StartsWith("| collective (shared memory) | 2 | 1GiB | 1.00 GiB | 0.215 (0.215–0.215) | 5.00 | 0.50× memcpy |", rows[3]);
        Assert.StartsWith("| collective (TCP chain) | 2 | 1GiB | 1.00 GiB | 0.537 (0.537–0.537) | 2.00 | 0.50× TCP |", rows[4]);
        Assert.Contains("| 1100 / 1100 MiB | 700.0 MiB |", rows[4]);
        // Registration runs in the bench process: a 1-rank column although --ranks is 2.
        Assert.Contains("| method | size | 1 rank | 2 ranks |", md);
        Assert.Contains("| registration (fresh) | 1GiB | 0.268 | – |", md);
        Assert.Contains("| collective (TCP chain) | 1GiB | – | 0.537 |", md);
        Assert.Contains("Registration: the checkpoint registered into host memory by the bench process", md);
        Assert.Contains("Collective: a raw broadcast of one --size buffer", md);
    }

    [Fact]
    public void Json_Cases_AndTheirBaselines()
    {
        using var doc = JsonDocument.Parse(CaseReport().ToJson());
        var configs = doc.RootElement.GetProperty("configurations").EnumerateArray().ToList();
        Assert.Equal(["fresh", "pooled", "in place", "shared memory", "TCP chain"], configs.Select(c => c.GetProperty("case").GetString()));
        Assert.Equal(["registration", "registration", "registration", "collective", "collective"], configs.Select(c => c.GetProperty("method").GetString()));
        Assert.Equal([Baseline.Memcpy, Baseline.Memcpy, Baseline.Memcpy, Baseline.Memcpy, Baseline.Tcp], configs.Select(c => c.GetProperty("baseline").GetString()));
        Assert.Equal(0.5, configs[4].GetProperty("ratio_to_baseline").GetDouble(), 6);
        Assert.Equal(0.4, configs[0].GetProperty("ratio_to_baseline").GetDouble(), 6);
        Assert.Equal(["registration", "collective"], doc.RootElement.GetProperty("settings").GetProperty("methods").EnumerateArray().Select(m => m.GetString()));
        // The update methods have no cases.
        using var updates = JsonDocument.Parse(Report().ToJson());
        Assert.Equal(JsonValueKind.Null, updates.RootElement.GetProperty("configurations")[0].GetProperty("case").ValueKind);
    }

    [Fact]
    public void Text_NotesOnlyForMethodsInTheRun()
    {
        var w = new StringWriter();
        Report().WriteText(w);
        Assert.DoesNotContain("registration:", w.ToString());
        Assert.DoesNotContain("collective:", w.ToString());
        w = new StringWriter();
        CaseReport().WriteText(w);
        Assert.Contains("\nregistration: the checkpoint registered", w.ToString());
        Assert.Contains("\ncollective: a raw broadcast", w.ToString());
        Assert.DoesNotContain("updates: median", w.ToString()); // No update in this run.
        Assert.DoesNotContain("**Updates**", CaseReport().ToMarkdown());
        Assert.Contains("**Updates**", Report().ToMarkdown());
    }

    [Fact]
    public void Spread_MedianOfOddAndEven()
    {
        Assert.Equal(new Spread(2, 1, 3), Spread.Of([3, 1, 2]));
        Assert.Equal(new Spread(2.5, 1, 4), Spread.Of([4, 1, 3, 2]));
        Assert.True(double.IsNaN(Spread.Of([]).Median));
    }
}
