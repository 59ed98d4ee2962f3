using System.Text.Json;
using CheckpointEngine.Cli.Bench;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Bench;

/// <summary><c>ckpt-engine bench</c> end to end through the script, at the smallest size.</summary>
[Collection(nameof(MultiProcessTests))]
public sealed class BenchCommandTests
{
    [Fact]
    public async Task Bench_Json_ConfigurationAndBaselines()
    {
        var traces = Directory.CreateTempSubdirectory("ckpt-bench-trace-").FullName;
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("bench", "--ranks", "1", "--size", "4MiB", "--method", "broadcast", "--repeat", "1", "--json", "--trace", traces);
        Assert.True(code == 0, stderr + stdout);
        // The configuration's last update, as a trace.
        using (var trace = JsonDocument.Parse(File.ReadAllText(Path.Combine(traces, "trace-broadcast-1r-4MiB.json"))))
        {
            Assert.True(trace.RootElement.GetProperty("traceEvents").GetArrayLength() > 0);
        }
        Directory.Delete(traces, true);
        using var doc = JsonDocument.Parse(stdout);
        var config = Assert.Single(doc.RootElement.GetProperty("configurations").EnumerateArray());
        Assert.Equal("broadcast", config.GetProperty("method").GetString());
        Assert.Equal(1, config.GetProperty("ranks").GetInt32());
        Assert.Equal(4L << 20, config.GetProperty("size").GetInt64());
        Assert.Equal(1, config.GetProperty("repeats").GetInt32());
        Assert.True(config.GetProperty("bytes").GetInt64() > 0);
        Assert.True(config.GetProperty("gbps_per_worker").GetDouble() > 0);
        Assert.True(config.GetProperty("ratio_to_baseline").GetDouble() > 0);
        Assert.True(config.GetProperty("prepare_seconds").GetDouble() > 0); // The ranks prepared the first update (the default).
        var baselines = doc.RootElement.GetProperty("baselines");
        foreach (var key in new[] { Baseline.Memcpy, Baseline.MemcpyAllThreads, Baseline.SharedMemory, Baseline.Tcp })
        {
            Assert.True(baselines.GetProperty(key).GetProperty("gbps").GetDouble() > 0, key);
        }
    }
}
