using System.Globalization;
using System.Text.Json;
using CheckpointEngine.Cli.Bench;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Bench;

/// <summary>
/// <c>ckpt-engine bench --method registration</c> and <c>--method collective</c> end to end through the script,
/// at a tiny size: their rows, their baselines, and nothing left behind.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class BenchMethodsTests(Python.PythonTorch torch) : IClassFixture<Python.PythonTorch>
{
    /// <summary>
    /// The peer: torch.distributed broadcasts of the same checkpoint between as many processes, measured in the same run (the
    /// script checks that every rank's model holds the owners' bytes, or reports nothing); every update row gets its ratio to it.
    /// </summary>
    /// <summary>Runs <c>bench</c> at 8 MiB, one measured update, with <paramref name="args"/>; its JSON once it exited 0.</summary>
    private static async Task<JsonDocument> BenchAsync(params string[] args)
    {
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(["bench", "--size", "8MiB", "--repeat", "1", "--json", .. args]);
        Assert.True(code == 0, stderr + stdout);
        return JsonDocument.Parse(stdout);
    }

    [Fact]
    public async Task Bench_Broadcast_MeasuresTheTorchPeerOnTheSameCheckpoint_AndRatiosToIt()
    {
        Assert.NotEmpty(torch.TorchVersion);
        using var doc = await BenchAsync("--ranks", "2", "--method", "broadcast");
        var peer = Assert.Single(doc.RootElement.GetProperty("torch_peer").EnumerateArray());
        var config = Assert.Single(doc.RootElement.GetProperty("configurations").EnumerateArray());
        Assert.Equal((2, config.GetProperty("bytes").GetInt64()), (peer.GetProperty("ranks").GetInt32(), peer.GetProperty("bytes").GetInt64()));
        Assert.True(peer.GetProperty("per_tensor_seconds").GetDouble() > 0 && peer.GetProperty("bucketed_seconds").GetDouble() > 0, peer.ToString());
        Assert.True(config.GetProperty("ratio_to_torch_per_tensor").GetDouble() > 0 && config.GetProperty("ratio_to_torch_bucketed").GetDouble() > 0, config.ToString());
    }

    [Fact]
    public async Task Bench_Registration_ThreeCasesAgainstMemcpy_LeavesNothing()
    {
        var before = Leftovers.Now();
        using var doc = await BenchAsync("--ranks", "1", "--method", "registration");
        var configs = doc.RootElement.GetProperty("configurations").EnumerateArray().ToList();
        Assert.Equal([RegistrationBench.Fresh, RegistrationBench.Pooled, RegistrationBench.InPlace], configs.Select(c => c.GetProperty("case").GetString()));
        foreach (var c in configs)
        {
            Assert.Equal("registration", c.GetProperty("method").GetString());
            Assert.Equal(1, c.GetProperty("repeats").GetInt32());
            Assert.InRange(c.GetProperty("bytes").GetInt64(), 1, 8L << 20); // The tensor bytes of the sample written for --size 8MiB.
            Assert.Equal(Baseline.Memcpy, c.GetProperty("baseline").GetString());
            Assert.True(c.GetProperty("ratio_to_baseline").GetDouble() > 0, c.GetProperty("case").GetString());
        }
        before.AssertNoneAdded();
    }

    [Fact]
    public async Task Bench_Quantize_OneAndAllThreadsAgainstMemcpy()
    {
        using var doc = await BenchAsync("--ranks", "1", "--method", "quantize");
        var configs = doc.RootElement.GetProperty("configurations").EnumerateArray().ToList();
        Assert.Equal(Environment.ProcessorCount > 1 ? [QuantizeBench.OneThread, QuantizeBench.AllThreads] : [QuantizeBench.OneThread],
            configs.Select(c => c.GetProperty("case").GetString()));
        foreach (var c in configs)
        {
            Assert.Equal("quantize", c.GetProperty("method").GetString());
            Assert.InRange(c.GetProperty("bytes").GetInt64(), 1, 8L << 20); // The BF16 linear weights of the sample written for --size 8MiB.
            Assert.Equal(Baseline.Memcpy, c.GetProperty("baseline").GetString());
            Assert.True(c.GetProperty("ratio_to_baseline").GetDouble() > 0, c.GetProperty("case").GetString());
        }
    }

    [Fact]
    public async Task Bench_TpFullAndTpSharded_TheShardAwareWorkerReceivesOnlyItsSlices()
    {
        using var doc = await BenchAsync("--ranks", "2", "--method", "tp-full,tp-sharded");
        var bytes = doc.RootElement.GetProperty("configurations").EnumerateArray().ToDictionary(c => c.GetProperty("method").GetString()!, c => c.GetProperty("bytes").GetInt64());
        Assert.Equal(["tp-full", "tp-sharded"], bytes.Keys);
        // The sample's q/k/v/gate/up and o/down projections are halved for each of 2 shards; embeddings, norms and the head stay whole.
        Assert.InRange(bytes["tp-sharded"], bytes["tp-full"] / 3, bytes["tp-full"] - 1);
        Assert.All(doc.RootElement.GetProperty("configurations").EnumerateArray(), c => Assert.Equal(0, c.GetProperty("network_bytes_per_rank").GetInt64())); // One host.
    }

    [Fact]
    public async Task Bench_SeparateHosts_BucketsCrossTcp_TheShardAwareWorkersTakeInOnlyTheirClassesParts()
    {
        using var doc = await BenchAsync("--ranks", "2", "--method", "tp-full,tp-sharded", "--separate-hosts");
        Assert.EndsWith(" --separate-hosts", doc.RootElement.GetProperty("command").GetString(), StringComparison.Ordinal);
        var rows = doc.RootElement.GetProperty("configurations").EnumerateArray().ToDictionary(c => c.GetProperty("method").GetString()!, c => c.Clone());
        Assert.All(rows.Values, r => Assert.Equal(Baseline.Tcp, r.GetProperty("baseline").GetString()));
        // Every rank reads over TCP at once: each row is also compared with two loopback connections at once, measured in the run.
        var atOnce = Baseline.AtOnce(Baseline.Tcp, 2);
        Assert.True(doc.RootElement.GetProperty("baselines").GetProperty(atOnce).GetProperty("gbps").GetDouble() > 0);
        Assert.All(rows.Values, r => Assert.Equal(atOnce, r.GetProperty("baseline_at_once").GetString()));
        var (full, sharded) = (rows["tp-full"].GetProperty("network_bytes_per_rank").GetInt64(), rows["tp-sharded"].GetProperty("network_bytes_per_rank").GetInt64());
        // Each rank owns half: a full update brings the other half's whole buckets over the network, a shard-aware one only this rank's class's part of them.
        Assert.InRange(full, rows["tp-full"].GetProperty("bytes").GetInt64() / 3, rows["tp-full"].GetProperty("bytes").GetInt64());
        Assert.InRange(sharded, 1, full - 1);
    }

    /// <summary>
    /// An elastic join: two owner ranks serve while two joiner ranks (another world) load the saved metas and update over P2P; the row
    /// is compared with TCP, every update delivered the whole checkpoint, and the owners stopped cleanly (nothing of theirs left).
    /// </summary>
    [Fact]
    public async Task Bench_P2PJoin_JoinersUpdateFromServingOwners_LeavesNothing()
    {
        var before = Leftovers.Now();
        using var doc = await BenchAsync("--ranks", "2", "--method", "p2p,p2p-join");
        var configs = doc.RootElement.GetProperty("configurations").EnumerateArray().ToDictionary(c => c.GetProperty("method").GetString()!);
        Assert.Equal(["p2p", "p2p-join"], configs.Keys);
        var join = configs["p2p-join"];
        Assert.Equal(Baseline.Tcp, join.GetProperty("baseline").GetString());
        Assert.Equal(configs["p2p"].GetProperty("bytes").GetInt64(), join.GetProperty("bytes").GetInt64()); // The whole checkpoint, as the owners' own P2P update.
        Assert.True(join.GetProperty("first_update_seconds").GetDouble() > 0 && join.GetProperty("ratio_to_baseline").GetDouble() > 0, join.ToString());
        Assert.Equal(JsonValueKind.Null, join.GetProperty("baseline_at_once").ValueKind); // One host: the lowest joiner reads for both, one stream.
        before.AssertNoneAdded();
    }

    [Fact]
    public async Task Bench_Collective_SharedMemoryAndTcpChainRows_LeavesNothing()
    {
        var before = Leftovers.Now();
        using var doc = await BenchAsync("--ranks", "2", "--method", "collective");
        var configs = doc.RootElement.GetProperty("configurations").EnumerateArray().ToList();
        Assert.Equal([CollectiveBench.SharedMemory, CollectiveBench.TcpChain], configs.Select(c => c.GetProperty("case").GetString()));
        Assert.Equal([Baseline.Memcpy, Baseline.Tcp], configs.Select(c => c.GetProperty("baseline").GetString()));
        foreach (var c in configs)
        {
            Assert.Equal("collective", c.GetProperty("method").GetString());
            Assert.Equal(2, c.GetProperty("ranks").GetInt32());
            Assert.Equal(8L << 20, c.GetProperty("bytes").GetInt64()); // The buffer is exactly --size.
            Assert.Equal(1, c.GetProperty("repeats").GetInt32());
            Assert.True(c.GetProperty("first_update_seconds").GetDouble() > 0);
            Assert.True(c.GetProperty("ratio_to_baseline").GetDouble() > 0, c.GetProperty("case").GetString());
        }
        before.AssertNoneAdded();
    }

    /// <summary>
    /// What a bench run may leave behind if it cleans up badly: its entries on /dev/shm (the baseline's segment, the
    /// registration's tmpfs copy, the collective ranks' buffers; other tests' names differ) and ckpt-engine bench processes.
    /// </summary>
    private sealed record Leftovers(HashSet<string> Segments, HashSet<int> Processes)
    {
        public static Leftovers Now() =>
            new([.. Directory.EnumerateFileSystemEntries("/dev/shm", "ckpt-bench-*"), .. Directory.EnumerateFileSystemEntries("/dev/shm", "ckpt-engine-bench-*")], [.. BenchProcesses()]);

        public void AssertNoneAdded()
        {
            var now = Now();
            Assert.Empty(now.Segments.Except(Segments));
            Assert.Empty(now.Processes.Except(Processes));
        }

        /// <summary>Processes running <c>ckpt-engine bench ...</c> (the ranks and the shared-memory reader are such).</summary>
        private static IEnumerable<int> BenchProcesses()
        {
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                {
                    continue;
                }
                string command;
                try
                {
                    command = File.ReadAllText(Path.Combine(dir, "cmdline"));
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    continue; // Gone meanwhile.
                }
                if (command.Contains("ckpt-engine", StringComparison.Ordinal) && command.Contains("\0bench\0", StringComparison.Ordinal))
                {
                    yield return pid;
                }
            }
        }
    }
}
