using System.Text.Json;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.Hosting.Tracing;

namespace CheckpointEngine.Tests.Simulation;

public sealed class SimulateCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-sim-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args) => InProcessCli.Run(args);

    [Fact]
    public void Json_ReportsTimeBoundAndPlan()
    {
        var (code, stdout, stderr) = Run("simulate", "--model", "glm-4.5-air", "--cluster", "h800", "--gpus", "8", "--tp", "8", "--design", "shard-aware", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.True(root.GetProperty("simulation").GetBoolean());
        Assert.Equal("shard-aware", root.GetProperty("design").GetString());
        Assert.True(root.GetProperty("seconds").GetDouble() > 0);
        Assert.Equal(4, root.GetProperty("slots").GetInt32()); // Two broadcast and two staging buffers.
        Assert.Contains(root.GetProperty("bound").GetString(), new[] { "staging", "nv-link", "network", "reload", "latency" });
        var routes = root.GetProperty("routes");
        Assert.Equal(root.GetProperty("buckets").GetInt32(), routes.GetProperty("scatter").GetInt32()); // One node: scattered, never relayed.
        Assert.Equal(0, routes.GetProperty("scatter-and-relay").GetInt32() + routes.GetProperty("broadcast").GetInt32());
    }

    [Fact]
    public void Trace_WritesATimelineTheRendererReads()
    {
        var path = Path.Combine(_dir, "sim.json");
        var (code, _, stderr) = Run("simulate", "--model", "deepseek-v3.1", "--cluster", "h20", "--gpus", "32", "--tp", "16", "--method", "p2p", "--design", "original", "--trace", path);
        Assert.True(code == 0, stderr);
        var timeline = ChromeTraceReader.Read(path);
        Assert.Equal(2, timeline.Rows.Select(r => r.Pid).Distinct().Count()); // The two nodes of the receiving instance.
        Assert.Contains(timeline.Rows, r => r.Track == "p2p read" && r.Bars.Count > 0);
        Assert.Contains(timeline.Rows, r => r.Track == "reload" && r.Bars.Count > 0);
    }

    [Fact]
    public void Checkpoint_CanBeGivenAsADirectory()
    {
        var dir = Path.Combine(_dir, "ckpt");
        Assert.Equal(0, Run("sample", dir, "--model", "qwen3-235b-a22b", "--size-mb", "4", "--shards", "2").Code);
        var (code, stdout, stderr) = Run("simulate", "--model", dir, "--cluster", "h200", "--gpus", "8", "--tp", "8", "--free-memory", "64MiB");
        Assert.True(code == 0, stderr);
        Assert.Contains("simulated update", stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--model", "nope")]
    [InlineData("--model", "kimi-k2", "--cluster", "tpu")]
    [InlineData("--model", "kimi-k2", "--design", "fast")]
    [InlineData("--model", "kimi-k2", "--gpus", "24", "--tp", "16")]
    [InlineData("--model", "kimi-k2", "--nics", "3")]
    [InlineData("--model", "kimi-k2", "--design", "shard-aware-pipelined", "--in-flight", "3")]
    [InlineData("--model", "kimi-k2", "--design", "shard-aware", "--in-flight", "0")]
    [InlineData("--model", "kimi-k2", "--design", "shard-aware-concurrent")]
    [InlineData("--model", "kimi-k2", "--design", "ours", "--class-relays", "on")]
    public void BadInput_IsOneLineNamingTheOption(params string[] args)
    {
        var (code, _, stderr) = Run(["simulate", .. args]);
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.StartsWith("error: ", stderr, StringComparison.Ordinal);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    [Fact]
    public void UnknownMethod_NamesTheMethodsAsTheyAreWritten()
    {
        var (code, _, stderr) = Run(["simulate", "--model", "kimi-k2", "--method", "multicast"]);
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Contains("--method multicast: expected one of broadcast, p2p", stderr, StringComparison.Ordinal);
    }
}
