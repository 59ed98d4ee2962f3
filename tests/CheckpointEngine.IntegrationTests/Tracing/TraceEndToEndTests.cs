using System.Globalization;
using System.Text.Json;
using System.Xml.Linq;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Tracing;

/// <summary><c>demo --trace</c> then <c>trace render</c> through <c>./ckpt-engine</c>, as users run them.</summary>
[Collection(nameof(MultiProcessTests))]
public sealed class TraceEndToEndTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-trace-e2e-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task DemoTrace_ThenRender_EveryRankHasEveryStageAndTheSvgDrawsThem()
    {
        var json = Path.Combine(_dir, "T.json");
        var svg = Path.Combine(_dir, "T.svg");
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("demo", "--ranks", "2", "--size", "8MiB", "--method", "broadcast", "--trace", json);
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains($"[rank 0] wrote trace {json}", stdout);
        Assert.Matches(@"broadcast: .*; pipeline efficiency \d+\.\d\d", stdout);
        // Every rank prints the same efficiency (they share their timings) in its machine line.
        var lines = CheckpointEngine.Cli.Bench.ResultLine.ParseAll(stdout).Where(r => r.Method == "broadcast").ToList();
        var efficiencies = lines.Where(r => r.Update == lines.Max(x => x.Update)).Select(r => r.Efficiency).ToList(); // The traced (last) update.
        Assert.Equal(2, efficiencies.Count);
        Assert.Single(efficiencies.Distinct());
        Assert.InRange(efficiencies[0], 1.0, 100.0);

        using (var doc = JsonDocument.Parse(File.ReadAllText(json)))
        {
            var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
            var threads = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name")
                .ToDictionary(e => (e.GetProperty("pid").GetInt32(), e.GetProperty("tid").GetInt32()), e => e.GetProperty("args").GetProperty("name").GetString()!);
            var spans = events.Where(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("cat").GetString() == "stage")
                .Select(e => (Rank: e.GetProperty("pid").GetInt32(), Stage: threads[(e.GetProperty("pid").GetInt32(), e.GetProperty("tid").GetInt32())]))
                .ToHashSet();
            // One host: every worker reads the owners' memory in place, so no rank stages (no h2d span); each bucket's turn and reload are drawn.
            foreach (var rank in new[] { 0, 1 })
            {
                foreach (var stage in new[] { "broadcast", "reload" })
                {
                    Assert.Contains((rank, stage), spans);
                }
                Assert.DoesNotContain((rank, "h2d"), spans);
            }
            AssertNoOverlapOnATrack(events);
        }

        (code, stdout, stderr) = await CkptEngineScript.RunAsync("trace", "render", json, "--out", svg);
        Assert.True(code == 0, stderr + stdout);
        var doc2 = XDocument.Load(svg);
        XNamespace ns = "http://www.w3.org/2000/svg";
        Assert.Contains(doc2.Descendants(ns + "rect"), r => (string?)r.Attribute("class") == "bar");
        Assert.Contains(doc2.Descendants(ns + "text"), t => t.Value == "rank 1 · reload");
    }

    [Fact]
    public async Task DemoJsonTrace_P2P_EfficiencyInTheJsonAndOneReaderTrack()
    {
        var json = Path.Combine(_dir, "p.json");
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("demo", "--ranks", "2", "--size", "8MiB", "--method", "p2p", "--json", "--trace", json);
        Assert.True(code == 0, stderr + stdout);
        var line = JsonDocument.Parse(Assert.Single(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))).RootElement;
        Assert.True(line.GetProperty("verified").GetBoolean());
        Assert.InRange(line.GetProperty("efficiency").GetDouble(), 1.0, 100.0);

        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        Assert.Equal("p2p", doc.RootElement.GetProperty("otherData").GetProperty("method").GetString());
        // One host, one network device: rank 0 reads every bucket and broadcasts it to rank 1.
        var readers = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("args").TryGetProperty("name", out var n) && n.GetString() == "p2p read")
            .Select(e => e.GetProperty("pid").GetInt32());
        Assert.Equal([0], readers);
        AssertNoOverlapOnATrack(events);
    }

    /// <summary>Spans on one track follow each other (trace viewers expect them to nest or not overlap).</summary>
    private static void AssertNoOverlapOnATrack(List<JsonElement> events)
    {
        foreach (var track in events.Where(e => e.GetProperty("ph").GetString() == "X")
            .GroupBy(e => (e.GetProperty("pid").GetInt32(), e.GetProperty("tid").GetInt32())))
        {
            var spans = track.Select(e => (Ts: e.GetProperty("ts").GetDouble(), End: e.GetProperty("ts").GetDouble() + e.GetProperty("dur").GetDouble()))
                .OrderBy(s => s.Ts).ToList();
            for (var i = 1; i < spans.Count; i++)
            {
                Assert.True(spans[i].Ts >= spans[i - 1].End - 1e-6, $"track {track.Key}: a span at {spans[i].Ts} µs starts before the previous one ends at {spans[i - 1].End} µs");
            }
        }
    }
}
