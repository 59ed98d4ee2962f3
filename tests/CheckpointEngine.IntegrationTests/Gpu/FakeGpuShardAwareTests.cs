using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.IntegrationTests.Server;

namespace CheckpointEngine.IntegrationTests.Gpu;

/// <summary>
/// Shard-aware updates on the CUDA backend with the stand-ins for the driver and NCCL: rank processes on "GPUs" (shared memory), NCCL
/// between them, reference workers opening the ranks' buffers through CUDA IPC. From the second update (the shards declare their slices
/// once they have seen the layout) each bucket is scattered from its stager with grouped NCCL sends and receives, each rank receiving
/// only its part; with an instance on each of two hosts (<c>CKPT_ENGINE_HOST_ID</c>), each class then relays its part to the other host
/// over its own NCCL communicator. Each rank's ingress is counted by its NCCL communicators (the report's <c>BytesReceived</c>).
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class FakeGpuShardAwareTests : IDisposable
{
    private readonly HashSet<string> _before = [.. FakeGpu.Leftovers()];
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-gpu-shards-").FullName;
    private readonly string _id = Guid.NewGuid().ToString("N")[..8];
    private readonly List<Process> _workers = [];
    private readonly Dictionary<string, string> _env = FakeGpu.Environment(8);

    public void Dispose()
    {
        TestProcess.KillAndDispose(_workers);
        Directory.Delete(_dir, true);
        FakeGpu.RemoveLeftovers(_before);
    }

    /// <summary>One reference worker per instance, its shards on GPUs g·TP … g·TP+TP−1; the second declares nothing when <paramref name="plainSecond"/>.</summary>
    private async Task<string[]> StartWorkers(int tp, int instances, bool plainSecond, params string[] extra)
    {
        var urls = new List<string>();
        for (var g = 0; g < instances; g++)
        {
            var psi = ReferenceWorkers.Start(Enumerable.Range(g * tp, tp).Select(d => FakeGpu.DeviceUuid(d, _env)), [.. g == 1 && plainSecond ? [] : new[] { "--shard-by-tp" }, .. extra]);
            foreach (var (k, v) in _env)
            {
                psi.Environment[k] = v;
            }
            urls.Add(await ReferenceWorkers.RunAsync(psi, _workers));
        }
        return [.. urls];
    }

    /// <summary>The ranks on the stand-ins, rank r on GPU r; with two hosts, instance g's ranks on host g.</summary>
    /// <param name="relays">UpdateOptions.ClassRelays: "on" (the tests' default, for the relays to run at two hosts), "off", or "auto" (on GPUs, with several buckets in flight or from <c>ParameterServer.GpuRelayHosts</c> hosts). inFlight 0: the default.</param>
    private Task<RankCluster.Result[]> RunRanks(int tp, int instances, int hosts, string dir, string[] urls, int updates, string timeoutS = "30", string relays = "on",
        params string[] extra) => RunRanks(tp, instances, hosts, dir, urls, updates, 1, timeoutS, relays, extra);

    private Task<RankCluster.Result[]> RunRanks(int tp, int instances, int hosts, string dir, string[] urls, int updates, int inFlight, string timeoutS, string relays,
        params string[] extra) =>
        RankCluster.RunAsync(tp * instances, ["update", dir, string.Join(',', urls), tp.ToString(CultureInfo.InvariantCulture), updates.ToString(CultureInfo.InvariantCulture), .. extra], r =>
        {
            var env = new Dictionary<string, string>(_env)
            {
                ["TEST_DEVICE"] = "cuda",
                ["LOCAL_RANK"] = r.ToString(CultureInfo.InvariantCulture),
                ["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = "0.0009765625", // 1 MiB: many buckets from every stager.
                ["TEST_TIMEOUT_S"] = timeoutS,
                ["TEST_CLASS_RELAYS"] = relays,
                ["TEST_BUCKETS_IN_FLIGHT"] = inFlight == 0 ? "" : inFlight.ToString(CultureInfo.InvariantCulture), // 0: the default.
            };
            if (hosts > 1)
            {
                env["CKPT_ENGINE_HOST_ID"] = $"gpu-{_id}-host{r / tp}";
            }
            return env;
        }, deadline: TimeSpan.FromMinutes(3));

    /// <summary>The ranks started from now on log their NCCL submissions (see <see cref="FakeGpu.SubmissionCycle"/>) in the directory returned.</summary>
    private string LogSubmissions()
    {
        var order = Directory.CreateDirectory(Path.Combine(_dir, "order")).FullName;
        _env["FAKE_NCCL_ORDER_DIR"] = order;
        return order;
    }

    /// <summary>Every rank submitted its NCCL operations in one order.</summary>
    private static void AssertOneSubmissionOrder(string order)
    {
        var cycle = FakeGpu.SubmissionCycle(order);
        Assert.True(cycle is null, $"no one order fits every rank's NCCL submissions: {cycle}");
    }

    private static long Field(RankCluster.Result r, string prefix, int index) =>
        long.Parse(r.Line(prefix).Split(' ')[index], CultureInfo.InvariantCulture);

    /// <summary>
    /// TP 2 and 4 over one and two instances (two instances on two hosts: the scatter and the class relays), and a second instance that
    /// declares nothing. Every shard holds exactly its slices (put back together they are the checkpoint's, every tensor kept whole is
    /// bit-exact); a worker that declared nothing holds everything. Each sharded rank's ingress shrank from the first update (no declarations:
    /// every bucket whole) to the second by as much as its shard did; a rank whose worker declared nothing takes in the same as before.
    /// </summary>
    [Theory]
    [InlineData(2, 1, 1, false)]
    [InlineData(4, 1, 1, false)]
    [InlineData(2, 2, 1, true)]
    [InlineData(2, 2, 2, false)]
    [InlineData(4, 2, 2, false)]
    [InlineData(2, 2, 2, true)]
    public async Task Update_ShardAwareOnCuda_ScattersAndRelays_EachShardHoldsItsSlices(int tp, int instances, int hosts, bool plainSecond)
    {
        var dir = ReferenceWorkers.WriteLayers(_dir);
        var urls = await StartWorkers(tp, instances, plainSecond);
        var results = await RunRanks(tp, instances, hosts, dir, urls, updates: 2);
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{string.Join("\n", results.Select(x => $"rank {x.Rank}:\n{x.Output}"))}");
            Assert.StartsWith("update 1 ok", r.Line("update 1 "));
            Assert.StartsWith("update 2 ok", r.Line("update 2 "));
            // One host: every bucket scattered. Two: the relayed ones (their local step); a bucket whose relay would not pay goes the plain way.
            var (buckets, scattered, relayed) = (Field(r, "update 2 ok", 5), Field(r, "received 2 ", 3), Field(r, "network 2 ", 3));
            Assert.True(scattered == (hosts > 1 ? relayed : buckets) && buckets > 1, $"rank {r.Rank}: {r.Line("received 2 ")} of {buckets} buckets, {relayed} relayed");
            Assert.Equal(0, Field(r, "received 1 ", 3)); // Nothing declared: broadcast whole.
            if (hosts > 1)
            {
                Assert.True(Field(r, "network 2 ", 3) > 0, $"rank {r.Rank}: no bucket relayed: {r.Line("network 2 ")}");
            }
            var (received1, received2) = (Field(r, "received 1 ", 2), Field(r, "received 2 ", 2));
            var (delivered1, delivered2) = (Field(r, "update 1 ok", 3), Field(r, "update 2 ok", 3));
            Assert.True(received1 > 0, r.Line("received 1 "));
            var plain = plainSecond && r.Rank >= tp;
            if (plain)
            {
                Assert.True(received2 == received1 && delivered2 == delivered1, $"rank {r.Rank} (declares nothing): {r.Line("received 1 ")} / {r.Line("received 2 ")}");
                continue;
            }
            if (plainSecond && hosts > 1 && r.Rank == 0)
            {
                // The proxy on host 0 of the class that declared nothing (it has no member there; ClassRelay picks the host's first member):
                // it takes host 0's buckets whole to relay them, its own part of the others' only.
                Assert.True(received2 < received1, $"rank 0 (proxy): {r.Line("received 1 ")} / {r.Line("received 2 ")}");
                continue;
            }
            // The ingress against the shard of the bytes that came from other ranks (own buckets never cross a link): about 1.
            var ratio = received2 / (received1 * (double)delivered2 / delivered1);
            TestContext.Current.TestOutputHelper?.WriteLine(FormattableString.Invariant(
                $"rank {r.Rank}: received {received2} of {received1} bytes; shard {delivered2} of {delivered1}; ingress ÷ shard of others' buckets {ratio:F3}"));
            // Across hosts a bucket whose relay would not pay (the tensors every class keeps whole make each class's part near the bucket)
            // is broadcast whole, as a scatter to every member would send each remote class its part apart: there the ingress is the bucket.
            Assert.True(delivered2 < delivered1 && ratio <= (hosts > 1 ? 1.5 : 1.05), $"rank {r.Rank}: received {received2} of {received1}, delivered {delivered2} of {delivered1} (ratio {ratio:F3})");
        }
        await ReferenceWorkers.AssertSlicesAssembleAsync(dir, plainSecond ? urls.Take(1) : urls);
        if (plainSecond)
        {
            await ReferenceWorkers.AssertHoldAsync(dir, [(urls[1], null)], tp);
        }
        Assert.Empty(FakeGpu.Leftovers().Except(_before)); // Every allocation, IPC mapping, transfer and communicator cleaned up after itself.
    }

    /// <summary>
    /// Three buckets in flight on GPUs (TP 4 over two instances on two hosts, relays on): the relays of buckets from the two hosts' stagers
    /// overlap, each over its host's groups; every shard still holds exactly its slices, twice in a row (the groups are kept), and nothing
    /// is left behind.
    /// </summary>
    [Fact]
    public async Task Update_ShardAwareOnCuda_BucketsInFlight_EachShardHoldsItsSlices()
    {
        var dir = ReferenceWorkers.WriteLayers(_dir);
        var urls = await StartWorkers(4, 2, false);
        var order = LogSubmissions();
        var results = await RunRanks(4, 2, 2, dir, urls, 3, 3, "30", "on");
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.StartsWith("update 3 ok", r.Line("update 3 "));
            Assert.True(Field(r, "network 3 ", 3) > 1, r.Line("network 3 ")); // Several buckets relayed.
        }
        // Buckets moved at once: on some rank a bucket's relay began before the one before it had ended.
        Assert.Contains(results, r => Field(r, "overlap 2 ", 2) + Field(r, "overlap 3 ", 2) > 0);
        Assert.All(results, r => Assert.Equal(0, Field(r, "overlap 1 ", 2))); // Nothing declared: one bucket at a time, broadcast whole.
        Assert.Equal(8, Directory.GetFiles(order, "*.log").Length);
        AssertOneSubmissionOrder(order);
        await ReferenceWorkers.AssertSlicesAssembleAsync(dir, urls);
        Assert.Empty(FakeGpu.Leftovers().Except(_before));
    }

    /// <summary>
    /// The defaults on GPUs at two hosts, TP 2 over two instances. The second update, the first with declarations, relays nothing and scatters
    /// nothing: one bucket in flight (a relay pays from <c>ParameterServer.GpuRelayHosts</c> hosts only), so each bucket is broadcast whole
    /// and cut on the device. From the third, every rank's last update had declared parts across hosts, so
    /// <c>ParameterServer.GpuBucketsInFlight</c> buckets move at once, relayed, and every rank submitted its NCCL operations in one order.
    /// Every shard holds exactly its slices.
    /// </summary>
    [Fact]
    public async Task Update_ShardAwareOnCuda_TwoHostsByDefault_BroadcastsThenRelaysSeveralInFlight_EachShardHoldsItsSlices()
    {
        var dir = ReferenceWorkers.WriteLayers(_dir);
        var urls = await StartWorkers(2, 2, false);
        var order = LogSubmissions();
        var results = await RunRanks(2, 2, 2, dir, urls, 3, 0, "30", "auto");
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.StartsWith("update 3 ok", r.Line("update 3 "));
            Assert.Equal(0, Field(r, "network 2 ", 3)); // No bucket relayed.
            Assert.Equal(0, Field(r, "received 2 ", 3)); // None scattered.
            Assert.True(Field(r, "update 2 ok", 3) < Field(r, "update 1 ok", 3), r.Line("update 2 ok")); // The worker took only its shard.
            Assert.True(Field(r, "network 3 ", 3) > 1, r.Line("network 3 ")); // Relayed, from the third update on.
            Assert.Equal(Field(r, "update 2 ok", 3), Field(r, "update 3 ok", 3));
            Assert.Equal((1, 1, 3), (Field(r, "overlap 1 ", 3), Field(r, "overlap 2 ", 3), Field(r, "overlap 3 ", 3))); // The report says what the default picked.
        }
        // A broadcast buffer more per bucket in flight beyond the first.
        Assert.All(results, r => Assert.True(Field(r, "update 3 ok", 6) == Field(r, "update 2 ok", 6) + 2, $"{r.Line("update 2 ok")} / {r.Line("update 3 ok")}"));
        Assert.Contains(results, r => Field(r, "overlap 3 ", 2) > 0);
        AssertOneSubmissionOrder(order);
        await ReferenceWorkers.AssertSlicesAssembleAsync(dir, urls);
        Assert.Empty(FakeGpu.Leftovers().Except(_before));
    }

    /// <summary>
    /// A worker failing at a bucket of a scattered and relayed update (two hosts, TP 2) fails every rank with its message, without
    /// waiting for a deadline; the next updates work (the third declares nothing again, the fourth scatters and relays).
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task Update_ShardAwareOnCuda_WorkerFails_EveryRankRaisesIt_NextUpdatesWork(int inFlight)
    {
        var dir = ReferenceWorkers.WriteLayers(_dir);
        var urls = await StartWorkers(2, 2, false, "--fail-at-bucket", "1", "--fail-at-update", "2");
        var results = await RunRanks(2, 2, 2, dir, urls, 4, inFlight, "600", "on");
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.StartsWith("update 1 ok", r.Line("update 1 "));
            Assert.StartsWith("update 2 failed", r.Line("update 2 "));
            Assert.Contains("injected failure at bucket 1", r.Line("update 2 "));
            Assert.StartsWith("update 3 ok", r.Line("update 3 "));
            Assert.StartsWith("update 4 ok", r.Line("update 4 "));
            Assert.True(Field(r, "received 4 ", 3) > 0 && Field(r, "network 4 ", 3) > 0, $"rank {r.Rank}: {r.Line("received 4 ")} / {r.Line("network 4 ")}");
        }
        await ReferenceWorkers.AssertSlicesAssembleAsync(dir, urls);
    }

    /// <summary>
    /// A rank killed in a scattered and relayed update (two hosts, TP 2; rank 1 dies in the second update): the survivors, waiting in NCCL
    /// sends, receives or broadcasts, fail without waiting for their deadline (600 s, beyond the test's), their communicators aborted.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task Update_ShardAwareOnCuda_RankKilledMidUpdate_SurvivorsFailWithoutWaitingForTheDeadline(int inFlight)
    {
        var dir = ReferenceWorkers.WriteLayers(_dir, layers: 24);
        var urls = await StartWorkers(2, 2, false, "--reload-delay-ms", "100");
        var results = await RunRanks(2, 2, 2, dir, urls, 2, inFlight, "600", "on", "kill-at-bucket", "1", "2", "2");
        RankCluster.AssertKilledMidSecondUpdate(results, killed: 1);
    }
}
