using System.Text.Json;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Bench;

/// <summary><c>ckpt-engine soak</c> end to end through the script, for a few rounds: a row per process, and no process or file left behind.</summary>
[Collection(nameof(MultiProcessTests))]
public sealed class SoakCommandTests
{
    [Fact]
    public async Task Soak_ThreeRounds_ReportsEveryServeRankAndTheWorker_AndStopsThem()
    {
        var temp = Path.GetTempPath();
        var dirsBefore = Directory.EnumerateDirectories(temp, "ckpt-engine-soak-*").ToHashSet();
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("soak", "--rounds", "3", "--json");
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("soak: round 3/3", stderr, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(stdout);
        var settings = doc.RootElement.GetProperty("settings");
        Assert.Equal((2, 3, 1, 3), (settings.GetProperty("ranks").GetInt32(), settings.GetProperty("rounds").GetInt32(),
            settings.GetProperty("fit_first_round").GetInt32(), settings.GetProperty("fit_last_round").GetInt32()));
        var rows = doc.RootElement.GetProperty("processes").EnumerateArray().ToList();
        Assert.Equal(["serve rank 0", "serve rank 1", "worker"], rows.Select(r => r.GetProperty("name").GetString()));
        foreach (var row in rows)
        {
            var rss = row.GetProperty("rss_kib").EnumerateArray().Select(v => v.GetInt64()).ToList();
            Assert.Equal(3, rss.Count);
            Assert.All(rss, v => Assert.InRange(v, 1_000, 10_000_000)); // A .NET process: megabytes, not nothing.
            Assert.Equal(rss[0], row.GetProperty("rss_start_kib").GetInt64());
            Assert.Equal(rss[^1], row.GetProperty("rss_end_kib").GetInt64());
            Assert.Equal(JsonValueKind.Number, row.GetProperty("slope_kib_per_round").ValueKind);
            // Each part is at most the whole.
            Assert.All(new[] { "anon_kib", "file_kib", "shmem_kib" }, part =>
                Assert.All(row.GetProperty(part).EnumerateArray().Select((v, i) => (v.GetInt64(), rss[i])), p => Assert.InRange(p.Item1, 0, p.Item2)));
            var pid = row.GetProperty("pid").GetInt32();
            Assert.False(Directory.Exists($"/proc/{pid}") && File.ReadAllText($"/proc/{pid}/cmdline").Contains("ckpt-engine", StringComparison.Ordinal),
                $"{row.GetProperty("name").GetString()} (pid {pid}) still runs after the soak");
        }
        Assert.Equal([], Directory.EnumerateDirectories(temp, "ckpt-engine-soak-*").Where(d => !dirsBefore.Contains(d)).ToList());
    }
}
