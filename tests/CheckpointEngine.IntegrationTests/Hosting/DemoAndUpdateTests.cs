using CheckpointEngine.Tests.Support;
using System.Diagnostics;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Hosting;

/// <summary>The product commands end to end, through <c>./ckpt-engine</c>: demo, launch + update, and a P2P join with saved metas.</summary>
[Collection(nameof(MultiProcessTests))]
public sealed class DemoAndUpdateTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-demo-").FullName;
    private readonly List<Process> _workers = [];

    public void Dispose()
    {
        TestProcess.KillAndDispose(_workers);
        Directory.Delete(_dir, true);
    }

    [Fact]
    public async Task Demo_Json_EveryMethodVerified()
    {
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("demo", "--ranks", "2", "--size", "8MiB", "--json");
        Assert.True(code == 0, stderr + stdout);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(["broadcast", "p2p"], lines.Select(l => l.GetProperty("method").GetString()));
        Assert.All(lines, l =>
        {
            Assert.True(l.GetProperty("verified").GetBoolean());
            Assert.Equal(2, l.GetProperty("ranks").GetInt32());
            Assert.True(l.GetProperty("bytes").GetInt64() > 4 << 20);
            Assert.True(l.GetProperty("gbps").GetDouble() > 0);
        });
    }

    /// <summary>Shard-aware demos verify at one shard too (nothing is sliced: every tensor is kept whole) as at two (the slices put together).</summary>
    [Theory]
    [InlineData("1")]
    [InlineData("2")]
    public async Task Demo_ShardByTp_Verified(string ranks)
    {
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("demo", "--ranks", ranks, "--size", "8MiB", "--method", "broadcast", "--shard-by-tp", "--json");
        Assert.True(code == 0, stderr + stdout);
        Assert.True(JsonDocument.Parse(stdout.Trim()).RootElement.GetProperty("verified").GetBoolean(), stdout);
    }

    [Fact]
    public async Task Demo_Summary_SaysVerified()
    {
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("demo", "--ranks", "1", "--size", "4MiB", "--method", "broadcast");
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("verified: every worker holds all", stdout);
    }

    [Fact]
    public async Task Demo_ModelPreset_RealisticTensorMixVerified()
    {
        // Kimi-K2's names, FP8 weights with F32 block scales, BF16 norms and embeddings, narrowed to 8 MiB.
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("demo", "--ranks", "2", "--size", "8MiB", "--method", "broadcast", "--model", "kimi-k2");
        Assert.True(code == 0, stderr + stdout);
        Assert.Matches(@"checkpoint shaped like kimi-k2 \(\d+ tensors\)", stdout);
        Assert.Contains("verified: every worker holds all", stdout);
        (code, _, stderr) = await CkptEngineScript.RunAsync("demo", "--model", "gpt-5");
        Assert.Equal(1, code);
        Assert.Contains("--model gpt-5: unknown preset; presets: ", stderr);
    }

    [Fact]
    public async Task Update_BadFlags_AreUsageErrors()
    {
        var (code, _, stderr) = await CkptEngineScript.RunAsync("update", "--endpoint", "http://127.0.0.1:1");
        Assert.NotEqual(0, code);
        Assert.Contains("exactly one of --checkpoint-path", stderr);
        (code, _, stderr) = await CkptEngineScript.RunAsync("update", "--endpoint", "http://x", "--load-metas-file", "m.json", "--update-method", "broadcast");
        Assert.NotEqual(0, code);
        Assert.Contains("must be p2p", stderr);
    }

    /// <summary>The original's flow: owners launch update with --save-metas-file and keep serving; new ranks launch update with --load-metas-file.</summary>
    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task LaunchUpdate_OwnersThenJoiners_BothWorkersVerified(string transport)
    {
        var ckpt = Path.Combine(_dir, "ckpt");
        SampleCheckpoint.Write(ckpt, 2 << 20, shards: 2, layers: 2);
        var metas = Path.Combine(_dir, "metas.json");
        var ownersWorker = await StartWorker("own");
        var joinersWorker = await StartWorker("join");

        var owners = CkptEngineScript.RunAsync(Devices("own"), null, "launch", "--nproc", "2", "--", "update", "--checkpoint-path", ckpt, "--endpoint", ownersWorker,
            "--inference-parallel-size", "2", "--update-method", "all", "--save-metas-file", metas, "--sleep-time", "8", "--timeout", "60", "--p2p-transport", transport);
        var clock = Stopwatch.StartNew();
        while (!File.Exists(metas) && clock.Elapsed < TimeSpan.FromSeconds(60) && !owners.IsCompleted)
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
        Assert.True(File.Exists(metas), owners.IsCompleted ? (await owners).Err + (await owners).Out : "no metas saved");
        var joiners = await CkptEngineScript.RunAsync(Devices("join"), null, "launch", "--nproc", "2", "--", "update", "--load-metas-file", metas, "--checkpoint-name", "checkpoint",
            "--endpoint", joinersWorker, "--inference-parallel-size", "2", "--update-method", "p2p", "--timeout", "60", "--p2p-transport", transport);
        Assert.True(joiners.Code == 0, joiners.Err + joiners.Out);
        Assert.Contains("[rank 1] result method=p2p", joiners.Out);
        Assert.Contains($"[rank 1] update (p2p): read over {transport}", joiners.Out);
        var ownerResult = await owners;
        Assert.True(ownerResult.Code == 0, ownerResult.Err + ownerResult.Out);
        Assert.Contains("[rank 0] result method=broadcast", ownerResult.Out);
        Assert.Contains("[rank 0] result method=p2p", ownerResult.Out);
        await AssertHolds(ckpt, joinersWorker);
        await AssertHolds(ckpt, ownersWorker);
    }

    /// <summary>Without a metas file: the joiners fetch the metas the fleet's rank 0 published in its rendezvous store.</summary>
    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task LaunchUpdate_JoinersFetchMetasFromTheFleetsStore(string transport)
    {
        var ckpt = Path.Combine(_dir, "ckpt");
        SampleCheckpoint.Write(ckpt, 2 << 20, shards: 2, layers: 2);
        var ownersWorker = await StartWorker("own");
        var joinersWorker = await StartWorker("join");
        var port = TestPorts.Free().ToString(System.Globalization.CultureInfo.InvariantCulture);
        var owners = CkptEngineScript.RunAsync(Devices("own"), null, "launch", "--nproc", "2", "--master-port", port, "--", "update", "--checkpoint-path", ckpt,
            "--endpoint", ownersWorker, "--inference-parallel-size", "2", "--sleep-time", "8", "--timeout", "60", "--p2p-transport", transport);
        // Started together: the joiners wait for the store and for the metas to appear in it.
        var joiners = await CkptEngineScript.RunAsync(Devices("join"), null, "launch", "--nproc", "2", "--", "update", "--metas-from", $"127.0.0.1:{port}",
            "--endpoint", joinersWorker, "--inference-parallel-size", "2", "--timeout", "60", "--p2p-transport", transport);
        Assert.True(joiners.Code == 0, joiners.Err + joiners.Out);
        Assert.Contains($"[rank 0] fetch metas from 127.0.0.1:{port}", joiners.Out);
        Assert.Contains("[rank 1] result method=p2p", joiners.Out);
        Assert.Contains($"transport={transport}", joiners.Out);
        var ownerResult = await owners;
        Assert.True(ownerResult.Code == 0, ownerResult.Err + ownerResult.Out);
        await AssertHolds(ckpt, joinersWorker);
    }

    /// <summary>
    /// Stopping a fleet that serves P2P reads after its update (SIGTERM to the launcher, as an operator or a scheduler would): the ranks
    /// say they stopped while serving and leave through their disposals, so none of the shared-memory segments they had mapped (read
    /// from their /proc maps while they served) is left behind for the next start's sweep.
    /// </summary>
    [Fact]
    public async Task LaunchUpdate_SigtermWhileServing_RanksStopCleanly_NoSegmentLeft()
    {
        var ckpt = Path.Combine(_dir, "ckpt");
        SampleCheckpoint.Write(ckpt, 2 << 20, shards: 2, layers: 2);
        var worker = await StartWorker("stop");
        var segments = new List<string>();
        var result = await CkptEngineScript.RunAsync(Devices("stop"), async launcher =>
        {
            await AssertHoldsWithin(ckpt, worker, TimeSpan.FromSeconds(60)); // The update is done: the ranks serve now.
            var ranks = Children(launcher.Id).ToList();
            Assert.Equal(2, ranks.Count);
            segments.AddRange(ranks.SelectMany(SharedMemoryMapped).Distinct());
            using var kill = Process.Start("kill", ["-TERM", launcher.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
            await kill.WaitForExitAsync(TestContext.Current.CancellationToken);
        }, "launch", "--nproc", "2", "--", "update", "--checkpoint-path", ckpt, "--endpoint", worker, "--inference-parallel-size", "2", "--sleep-time", "120", "--timeout", "60");

        Assert.True(result.Code == 143, result.Err + result.Out);
        Assert.Contains("[rank 0] stopped while serving", result.Out);
        Assert.Contains("[rank 1] stopped while serving", result.Out);
        Assert.NotEmpty(segments); // Each rank had its registered buffers and device buffer mapped.
        Assert.DoesNotContain(segments, File.Exists);
    }

    /// <summary>The children of a process, from every one of its threads' lists (whichever thread started them).</summary>
    private static IEnumerable<int> Children(int pid) =>
        Directory.EnumerateDirectories($"/proc/{pid}/task").SelectMany(t => File.ReadAllText(Path.Combine(t, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Select(c => int.Parse(c, System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>The project's shared-memory segments a process has mapped (still named: an unlinked one reads "(deleted)").</summary>
    private static IEnumerable<string> SharedMemoryMapped(int pid) =>
        File.ReadLines($"/proc/{pid}/maps").Select(l => l.IndexOf("/dev/shm/ckpt-engine-", StringComparison.Ordinal) is var at and >= 0 ? l[at..] : null)
            .OfType<string>().Where(p => !p.EndsWith(" (deleted)", StringComparison.Ordinal));

    private static async Task AssertHoldsWithin(string dir, string url, TimeSpan deadline)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await AssertHolds(dir, url);
                return;
            }
            catch (Exception) when (clock.Elapsed < deadline)
            {
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
        }
    }

    /// <summary>
    /// Operator's view, not on a terminal (a pipe, as in CI): the ranks' lines pass through as before, their progress comes as the
    /// launcher's own "progress:" lines (at most one a second, and the last state at the end) and a summary table closes the run.
    /// </summary>
    [Fact]
    public async Task LaunchUpdate_NotATerminal_ProgressLinesFromTheLauncher_AndASummaryTable()
    {
        var ckpt = Path.Combine(_dir, "ckpt");
        SampleCheckpoint.Write(ckpt, 4 << 20, shards: 2, layers: 2);
        var worker = await StartWorker("own");
        var run = await CkptEngineScript.RunAsync(Devices("own"), null, "launch", "--nproc", "2", "--", "update", "--checkpoint-path", ckpt, "--endpoint", worker,
            "--inference-parallel-size", "2", "--update-method", "all", "--repeat", "2", "--timeout", "60");
        Assert.True(run.Code == 0, run.Err + run.Out);
        var lines = run.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToList();
        // Every line a rank prints still comes through (tools parse the result lines), but not their machine progress lines.
        Assert.Contains("[rank 1] result method=p2p", run.Out, StringComparison.Ordinal);
        Assert.Contains(lines, l => l.StartsWith("[rank 0] gather metas: ", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains("] progress ", StringComparison.Ordinal));
        var progress = lines.Where(l => l.StartsWith("progress: ", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(progress);
        Assert.All(progress, l => Assert.Matches(@"^progress: rank 0 .+ \| rank 1 .+$", l));
        Assert.Equal("progress: rank 0 done | rank 1 done", progress[^1]);
        // The summary: one row per method, update and rank, after every rank line.
        var header = lines.FindIndex(l => l.Contains("| method", StringComparison.Ordinal) && l.Contains("GB/s", StringComparison.Ordinal));
        Assert.True(header > lines.FindLastIndex(l => l.StartsWith("[rank ", StringComparison.Ordinal)), run.Out);
        foreach (var method in new[] { "broadcast", "p2p" })
        {
            for (var update = 0; update < 2; update++)
            {
                for (var rank = 0; rank < 2; rank++)
                {
                    Assert.Single(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, $@"^\| {method}\s+\|\s+{update} \|\s+{rank} \| +[\d.]+ MiB \|"));
                }
            }
        }
        await AssertHolds(ckpt, worker);
    }

    /// <summary>Each launch's ranks get their own device ids ("{local_rank}" is filled in per rank).</summary>
    private string Tag(string tag) => $"{tag}-{Path.GetFileName(_dir)}";

    /// <summary>A launch makes up a token unless one is set; instances that join a fleet must share the fleet's.</summary>
    private Dictionary<string, string> Devices(string tag) => new()
    {
        ["CKPT_ENGINE_DEVICE_ID"] = Tag(tag) + "-{local_rank}",
        ["CKPT_ENGINE_TOKEN"] = "fleet-secret",
    };

    private async Task<string> StartWorker(string tag)
    {
        var psi = RankCluster.Start(["cli", "worker", "--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", $"{Tag(tag)}-0,{Tag(tag)}-1"]);
        var p = Process.Start(psi)!;
        _workers.Add(p);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (true)
        {
            var line = await p.StandardOutput.ReadLineAsync(cts.Token) ?? throw new InvalidOperationException("worker exited");
            if (line.StartsWith("listening on ", StringComparison.Ordinal))
            {
                return line["listening on ".Length..].Trim();
            }
        }
    }

    private static async Task AssertHolds(string dir, string url)
    {
        using var checkpoint = Checkpoint.Open(dir);
        var expected = checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(e.File.View(e.Tensor).Span)));
        using var http = new HttpClient();
        using var doc = JsonDocument.Parse(await http.GetStringAsync(url.TrimEnd('/') + "/v1/weights/digest"));
        var shards = doc.RootElement.GetProperty("shards").EnumerateArray().ToList();
        Assert.Equal(2, shards.Count);
        foreach (var shard in shards)
        {
            var tensors = shard.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!);
            Assert.Equal(expected.OrderBy(kv => kv.Key, StringComparer.Ordinal), tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal));
        }
    }
}
