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
    public void Json_UnmeasuredFigures_AreNull()
    {
        var report = Report(ranksSampled: false);
        var c = report.Configurations[0];
        report = report with { Configurations = [c with { First = null, Samples = [c.Samples[0] with { Stage = double.NaN }] }] };
        using var doc = JsonDocument.Parse(report.ToJson());
        var only = doc.RootElement.GetProperty("configurations")[0];
        Assert.Equal(JsonValueKind.Null, only.GetProperty("first_update_seconds").ValueKind);
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

    [Fact]
    public void Spread_MedianOfOddAndEven()
    {
        Assert.Equal(new Spread(2, 1, 3), Spread.Of([3, 1, 2]));
        Assert.Equal(new Spread(2.5, 1, 4), Spread.Of([4, 1, 3, 2]));
        Assert.True(double.IsNaN(Spread.Of([]).Median));
    }
}
