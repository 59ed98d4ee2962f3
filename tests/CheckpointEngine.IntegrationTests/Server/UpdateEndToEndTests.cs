using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Tests.Support;
using System.Diagnostics;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json;
using CheckpointEngine.Memory;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Server;

/// <summary>
/// Whole updates with real processes: parameter-server ranks (the test rank program) and reference
/// inference workers, bytes checked by the workers' digests against the checkpoint files.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class UpdateEndToEndTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-e2e-").FullName;
    private readonly string _id = Guid.NewGuid().ToString("N")[..8];
    private readonly List<Process> _workers = [];

    public void Dispose()
    {
        TestProcess.KillAndDispose(_workers);
        Directory.Delete(_dir, true);
        SharedMemorySegment.SweepAbandoned(TimeSpan.Zero); // Device segments of ranks this test killed.
    }

    /// <summary>Mixed dtypes, odd shapes, zero-size, scalar, one tensor over the 1 MiB bucket limit, many tiny ones; sharded in 3 files.</summary>
    private string WriteCheckpoint(int tiny = 300, long bigBytes = 3 << 20)
    {
        var rng = new Random(42);
        byte[] Bytes(long n)
        {
            var b = new byte[n];
            rng.NextBytes(b);
            return b;
        }
        TensorToWrite T(string name, DType dtype, params long[] shape) => TensorToWrite.FromBytes(name, dtype, shape, Bytes(dtype.ByteLength(shape)));
        var files = new List<TensorToWrite>[]
        {
            [T("model.embed.weight", DType.BF16, bigBytes / 2 / 64, 64), T("model.norm.weight", DType.F32, 77), T("model.step", DType.I64)],
            [T("layers.0.q_proj.weight", DType.BF16, 96, 40), T("layers.0.o_proj.weight", DType.F16, 40, 96), T("layers.0.up_proj.weight", DType.F8_E4M3, 128, 33),
             T("layers.0.up_proj.weight_scale", DType.F32), T("layers.0.mask", DType.BOOL, 7, 9), T("layers.0.empty", DType.F16, 0, 13), T("layers.0.ids", DType.I64, 1001)],
            [.. Enumerable.Range(0, tiny).Select(i => T($"tiny.{i:D4}", i % 2 == 0 ? DType.F32 : DType.BF16, 1 + i % 7))],
        };
        var dir = Path.Combine(_dir, "ckpt");
        Directory.CreateDirectory(dir);
        for (var i = 0; i < files.Length; i++)
        {
            SafeTensorsWriter.Write(Path.Combine(dir, $"part-{i}.safetensors"), files[i]);
        }
        return dir;
    }

    private static Dictionary<string, string> SourceDigests(string dir) => ReferenceWorkers.SourceDigests(dir);

    private string DeviceId(int rank) => $"e2e-{_id}-{rank}";

    /// <summary>Starts one reference worker per inference group; returns their URLs.</summary>
    private Task<string[]> StartWorkers(int ranks, int tp, params string[] extra) => StartWorkers(DeviceId, ranks, tp, extra);

    private async Task<string[]> StartWorkers(Func<int, string> deviceId, int ranks, int tp, params string[] extra)
    {
        var urls = new List<string>();
        for (var g = 0; g < ranks / tp; g++)
        {
            urls.Add(await ReferenceWorkers.RunAsync(ReferenceWorkers.Start(Enumerable.Range(g * tp, tp).Select(deviceId), extra), _workers));
        }
        return [.. urls];
    }

    /// <summary>
    /// The ranks' own deadline (TEST_TIMEOUT_S) where a test shows that something fails without waiting for it:
    /// far beyond the cluster's 90 s, so a rank that waits for it is killed and reported with exit code −1.
    /// </summary>
    private const string NeverReached = "600";

    private async Task<RankCluster.Result[]> RunRanks(int ranks, string dir, string[] urls, int tp, int updates, params string[] extra) =>
        await RunRanks(ranks, dir, urls, tp, updates, 64, "30", extra);

    private async Task<RankCluster.Result[]> RunRanks(int ranks, string dir, string[] urls, int tp, int updates, int deviceMemoryMb, params string[] extra) =>
        await RunRanks(ranks, dir, urls, tp, updates, deviceMemoryMb, "30", extra);

    private async Task<RankCluster.Result[]> RunRanks(int ranks, string dir, string[] urls, int tp, int updates, int deviceMemoryMb, string timeoutS, params string[] extra) =>
        await RankCluster.RunAsync(ranks, ["update", dir, string.Join(',', urls), tp.ToString(System.Globalization.CultureInfo.InvariantCulture), updates.ToString(System.Globalization.CultureInfo.InvariantCulture), .. extra],
            r => new Dictionary<string, string>
            {
                ["CKPT_ENGINE_DEVICE_ID"] = DeviceId(r),
                ["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = "0.0009765625", // 1 MiB: many buckets, one tensor over the limit.
                ["TEST_TIMEOUT_S"] = timeoutS,
                ["TEST_DEVICE_MEMORY_MB"] = deviceMemoryMb.ToString(System.Globalization.CultureInfo.InvariantCulture),
            });

    private static Task<Dictionary<string, Dictionary<string, string>>> WorkerDigests(string url) => ReferenceWorkers.DigestsAsync(url);

    private static Task AssertWorkersHold(string dir, string[] urls, int ranks) => ReferenceWorkers.AssertHoldAsync(dir, urls.Select(u => (u, (HttpClient?)null)), ranks);

    /// <summary>Buckets each shard of these workers has loaded so far.</summary>
    private static async Task<long[]> BucketsLoaded(string[] urls)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var counts = new List<long>();
        foreach (var url in urls)
        {
            var doc = await http.GetFromJsonAsync<JsonElement>(url.TrimEnd('/') + "/v1/weights/digest");
            counts.AddRange(doc.GetProperty("shards").EnumerateArray().Select(s => s.GetProperty("buckets_loaded").GetInt64()));
        }
        return [.. counts];
    }

    private static void AssertAllOk(RankCluster.Result[] results, int updates)
    {
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            for (var u = 1; u <= updates; u++)
            {
                Assert.StartsWith($"update {u} ok", r.Line($"update {u} "));
            }
        }
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 2)]
    [InlineData(4, 2)]
    public async Task Update_EveryWorkerHoldsTheCheckpoint(int ranks, int tp)
    {
        var dir = WriteCheckpoint();
        var urls = await StartWorkers(ranks, tp);
        var results = await RunRanks(ranks, dir, urls, tp, updates: 1);
        AssertAllOk(results, 1);
        Assert.All(results, r => Assert.Equal("path 1 in-place 0", r.Line("path 1 "))); // One host: workers read the owners' segments.
        await AssertWorkersHold(dir, urls, ranks);
    }

    [Fact]
    public async Task Update_ShortOfDeviceMemory_UsesTwoBuffersAndVerifies()
    {
        var dir = WriteCheckpoint();
        var urls = await StartWorkers(2, 2);
        // 8 MiB of device memory: the 3 MiB tensor does not fit three times, so buckets alternate between two buffers.
        var results = await RunRanks(2, dir, urls, 2, 1, deviceMemoryMb: 8);
        AssertAllOk(results, 1);
        Assert.All(results, r => Assert.EndsWith(" 2", r.Line("update 1 ok")));
        await AssertWorkersHold(dir, urls, 2);
    }

    [Fact]
    public async Task Update_Twice_ReusesBuffersAndVerifies()
    {
        var dir = WriteCheckpoint();
        var urls = await StartWorkers(2, 1);
        var results = await RunRanks(2, dir, urls, 1, updates: 2);
        AssertAllOk(results, 2);
        // The second registration got every buffer back from the pool.
        Assert.All(results, r => Assert.NotEqual("0", r.Line("registered 2").Split(' ')[3]));
        await AssertWorkersHold(dir, urls, 2);
    }

    /// <summary>
    /// Shard-aware updates: engines whose shards declare their slices (from the second update, once they have seen
    /// the layout) next to one that declares nothing. Each rank sends its worker only what that worker keeps; every
    /// shard then holds exactly its slice (the slices of all shards put back together have the source tensor's
    /// checksum), and an engine that declared nothing holds every tensor whole.
    /// </summary>
    [Theory]
    [InlineData(2, 2, false)] // TP 2, one instance: the scatter among the instance's ranks.
    [InlineData(4, 4, false)] // TP 4, one instance.
    [InlineData(4, 2, true)]  // TP 2, two instances (the second declares nothing): a part broadcast across instances.
    public async Task Update_ShardAware_EachShardHoldsItsSliceBitExact(int ranks, int tp, bool plainSecondInstance)
    {
        var dir = WriteCheckpoint();
        var sharded = (await StartWorkers(DeviceId, tp, tp, "--shard-by-tp"))[0];
        string[] urls = ranks == tp ? [sharded]
            : plainSecondInstance ? [sharded, (await StartWorkers(r => DeviceId(r + tp), tp, tp))[0]]
            : [sharded, (await StartWorkers(r => DeviceId(r + tp), tp, tp, "--shard-by-tp"))[0]];
        var results = await RunRanks(ranks, dir, urls, tp, updates: 3);
        AssertAllOk(results, 3);
        Assert.All(results, r => Assert.Equal("path 2 in-place 0", r.Line("path 2 "))); // Parts in place, column slices gathered by each rank.

        long Bytes(RankCluster.Result r, int update) => long.Parse(r.Line($"update {update} ok").Split(' ')[3], System.Globalization.CultureInfo.InvariantCulture);
        long Declarations(RankCluster.Result r, int update) => long.Parse(r.Line($"declarations {update} ").Split(' ')[2], System.Globalization.CultureInfo.InvariantCulture);
        var total = Bytes(results[0], 1);
        Assert.All(results, r => Assert.Equal(total, Bytes(r, 1)));
        Assert.All(results.Take(tp), r => Assert.True(Bytes(r, 2) < total, $"rank {r.Rank} sent {Bytes(r, 2)} of {total} bytes"));
        Assert.All(results, r => Assert.Equal(Bytes(r, 2), Bytes(r, 3)));
        // The declarations go round once, with the first declared update; the next one exchanges digests only.
        Assert.All(results, r => Assert.Equal(0, Declarations(r, 1)));
        Assert.All(results, r => Assert.True(Declarations(r, 2) > 0, r.Line("declarations 2")));
        Assert.All(results, r => Assert.Equal(0, Declarations(r, 3)));
        if (plainSecondInstance)
        {
            Assert.All(results.Skip(tp), r => Assert.Equal(total, Bytes(r, 2)));
        }

        var expected = SourceDigests(dir);
        using var checkpoint = Checkpoint.Open(dir);
        var crcs = checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => System.IO.Hashing.Crc32.HashToUInt32(e.File.View(e.Tensor).Span).ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var doc = await http.GetFromJsonAsync<JsonElement>(sharded + "/v1/weights/digest", TestContext.Current.CancellationToken);
        var assembled = doc.GetProperty("assembled_crc32").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        Assert.Equal(["layers.0.o_proj.weight", "layers.0.q_proj.weight", "layers.0.up_proj.weight"], assembled.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, crc) in assembled)
        {
            Assert.Equal(crcs[name], crc);
        }
        foreach (var shard in doc.GetProperty("shards").EnumerateArray())
        {
            var sliced = shard.GetProperty("sliced").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
            Assert.Equal(3, sliced.Count);
            foreach (var t in shard.GetProperty("tensors").EnumerateObject().Where(t => !sliced.Contains(t.Name)))
            {
                Assert.Equal(expected[t.Name], t.Value.GetString());
            }
        }
        if (plainSecondInstance)
        {
            foreach (var (_, tensors) in await WorkerDigests(urls[1]))
            {
                Assert.Equal(expected.OrderBy(kv => kv.Key, StringComparer.Ordinal), tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal));
            }
        }
    }

    private string WriteLayers(int layers = 6) => ReferenceWorkers.WriteLayers(_dir, layers);

    /// <summary>
    /// Ranks on two hosts (as <c>CKPT_ENGINE_HOST_ID</c> tells them), shard-aware: between the hosts each class relays its part from
    /// a head on the stager's host over its own group, so each rank's network ingress is its part, not the whole bucket through its
    /// host's leader. TP 2, an instance on each host: a host takes in no more than before. TP 4, one instance spanning both hosts:
    /// the classes of the other host have proxies on the stager's, and each host takes in only its classes' parts, about half.
    /// Every shard holds exactly its slices; the same with three buckets in flight (relays of buckets from the two hosts' stagers at once).
    /// TP 4 over four hosts of a rank each: every stager proxies the classes of the three other hosts.
    /// </summary>
    [Theory]
    [InlineData(2, 1, 2)]
    [InlineData(4, 1, 2)]
    [InlineData(4, 3, 2)]
    [InlineData(4, 1, 1)]
    [InlineData(4, 3, 1)]
    public async Task Update_ShardAwareAcrossHosts_ClassesRelayTheirParts(int tp, int inFlight, int perHost)
    {
        var dir = WriteLayers();
        var urls = await StartWorkers(4, tp, "--shard-by-tp");
        var results = await RankCluster.RunAsync(4, ["update", dir, string.Join(',', urls), tp.ToString(System.Globalization.CultureInfo.InvariantCulture), "2"],
            r => new Dictionary<string, string>
            {
                ["CKPT_ENGINE_DEVICE_ID"] = DeviceId(r),
                ["CKPT_ENGINE_HOST_ID"] = $"e2e-{_id}-host{r / perHost}",
                ["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = "0.0009765625",
                ["TEST_TIMEOUT_S"] = "30",
                ["TEST_BUCKETS_IN_FLIGHT"] = inFlight.ToString(System.Globalization.CultureInfo.InvariantCulture),
            });
        AssertAllOk(results, 2);
        Assert.All(results, r => Assert.StartsWith("path 2 staged ", r.Line("path 2 "))); // Two hosts: staged and broadcast as before.
        (long Bytes, int Relayed) Network(RankCluster.Result r, int update)
        {
            var f = r.Line($"network {update} ").Split(' ');
            return (long.Parse(f[2], System.Globalization.CultureInfo.InvariantCulture), int.Parse(f[3], System.Globalization.CultureInfo.InvariantCulture));
        }
        // The first update declares nothing: a host's leader (its first rank) takes every bucket of the other hosts whole, its peer nothing.
        Assert.All(results, r => Assert.Equal(0, Network(r, 1).Relayed));
        Assert.All(results, r => Assert.True(r.Rank % perHost == 0 ? Network(r, 1).Bytes > 0 : Network(r, 1).Bytes == 0, $"rank {r.Rank}: {r.Line("network 1")}"));
        // Then each rank takes its own class's part from the other hosts.
        Assert.All(results, r => Assert.True(Network(r, 2).Relayed > 0 && Network(r, 2).Bytes > 0, $"rank {r.Rank}: {r.Line("network 2")}"));
        for (var host = 0; host < 4; host += perHost)
        {
            var (before, after) = (Network(results[host], 1).Bytes, results.Skip(host).Take(perHost).Sum(r => Network(r, 2).Bytes));
            var most = tp == 2 ? before : perHost == 1 ? before / 2 : before * 3 / 4;
            Assert.True(after <= most, $"host of ranks {host}..{host + perHost - 1}: {after} bytes in the second update against {results[host].Line("network 1")}");
        }
        // With several in flight, some rank's relays of two buckets overlapped; with one, never.
        Assert.True(inFlight > 1 == results.Any(r => int.Parse(r.Line("overlap 2 ").Split(' ')[2], System.Globalization.CultureInfo.InvariantCulture) > 0),
            string.Join("\n", results.Select(r => r.Line("overlap 2 "))));
        await AssertSlicesAssemble(dir, urls);
    }

    private static Task AssertSlicesAssemble(string dir, string[] urls) => ReferenceWorkers.AssertSlicesAssembleAsync(dir, urls);

    [Fact]
    public async Task Update_WorkerFails_EveryRankRaisesItsMessage_NextUpdateSucceeds()
    {
        var dir = WriteCheckpoint();
        var urls = await StartWorkers(2, 2, "--fail-at-bucket", "1");
        var results = await RunRanks(2, dir, urls, 2, updates: 2);
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, r.Output);
            var failed = r.Line("update 1 ");
            Assert.StartsWith("update 1 failed", failed);
            Assert.Contains("injected failure at bucket 1", failed); // Agreed on at the bucket, not a deadline's error.
            Assert.StartsWith("update 2 ok", r.Line("update 2 "));
            // In place: the rank whose worker did not fail had handed it bucket 2 while the ranks agreed on bucket 1.
            Assert.StartsWith("path 2 in-place", r.Line("path 2 "));
        }
        await AssertWorkersHold(dir, urls, 2);
    }

    [Fact]
    public async Task Update_RankKilledMidUpdate_SurvivorsFailWithoutWaitingForTheDeadline()
    {
        var dir = WriteCheckpoint();
        // 100 ms per bucket and about a dozen buckets: rank 1 dies 300 ms in, mid-update.
        var urls = await StartWorkers(4, 2, "--reload-delay-ms", "100");
        // The survivors' deadline lies beyond the cluster's: failing at all (exit 3, not −1) means the store reported the death.
        var results = await RunRanks(4, dir, urls, 2, 1, 64, NeverReached, "kill-at-bucket", "1", "2");
        Assert.Equal(137, results[1].ExitCode);
        foreach (var r in results.Where(r => r.Rank != 1))
        {
            Assert.True(r.ExitCode == 3, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.Contains("rank 1", r.Line("error"));
            Assert.StartsWith("update 1 failed", r.Line("update 1 "));
        }
    }

    /// <summary>
    /// Faults in a shard-aware update (the second: the shards declare their slices once they have seen the layout): a worker
    /// that fails at a bucket fails every rank with its message and the next update works; a rank killed mid-update fails the
    /// survivors without waiting for their deadline.
    /// </summary>
    [Fact]
    public async Task Update_ShardAware_WorkerFails_EveryRankRaisesIt_NextUpdateSucceeds()
    {
        var dir = WriteLayers();
        var urls = await StartWorkers(2, 2, "--shard-by-tp", "--fail-at-bucket", "1", "--fail-at-update", "2");
        var results = await RunRanks(2, dir, urls, 2, updates: 4);
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, r.Output);
            Assert.StartsWith("update 1 ok", r.Line("update 1 "));
            Assert.StartsWith("update 2 failed", r.Line("update 2 "));
            Assert.Contains("injected failure at bucket 1", r.Line("update 2 "));
            Assert.StartsWith("update 3 ok", r.Line("update 3 ")); // Declares nothing again after a failure,
            Assert.StartsWith("update 4 ok", r.Line("update 4 ")); // then its slices.
            Assert.True(long.Parse(r.Line("update 4 ok").Split(' ')[3], System.Globalization.CultureInfo.InvariantCulture)
                < long.Parse(r.Line("update 3 ok").Split(' ')[3], System.Globalization.CultureInfo.InvariantCulture), r.Output);
        }
        await AssertSlicesAssemble(dir, urls);
    }

    [Fact]
    public async Task Update_ShardAware_RankKilledMidUpdate_SurvivorsFailWithoutWaitingForTheDeadline()
    {
        var dir = WriteLayers(layers: 24);
        var urls = await StartWorkers(4, 2, "--shard-by-tp", "--reload-delay-ms", "100");
        var results = await RunRanks(4, dir, urls, 2, 2, 64, NeverReached, "kill-at-bucket", "1", "2", "2");
        RankCluster.AssertKilledMidSecondUpdate(results, killed: 1);
    }

    private static Task<RankCluster.Result[]> RunWorld(int ranks, string[] args, Func<int, string> deviceId, Task? killWhen = null, string maxBucketGb = "0.0009765625",
        string timeoutS = "30", string transport = P2PStores.Tcp, int updates = 1, Func<int, string>? hostId = null) =>
        RankCluster.RunAsync(ranks, args, r => new Dictionary<string, string>(hostId is null ? [] : [KeyValuePair.Create("CKPT_ENGINE_HOST_ID", hostId(r))])
        {
            ["TEST_UPDATES"] = updates.ToString(System.Globalization.CultureInfo.InvariantCulture),
            [P2PTransports.Variable] = transport,
            ["CKPT_ENGINE_DEVICE_ID"] = deviceId(r),
            ["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = maxBucketGb,
            ["TEST_TIMEOUT_S"] = timeoutS,
        }, killWhen: killWhen);

    private string JoinerId(int rank) => $"e2e-{_id}-j{rank}";

    /// <summary>Four owners register, broadcast to their workers, save metas and keep serving; two new ranks (their own world) join by P2P.</summary>
    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Join_NewRanksPullFromOwners_OwnersUndisturbed(string transport)
    {
        var dir = WriteCheckpoint();
        var metas = Path.Combine(_dir, "metas.json");
        var ownerUrls = await StartWorkers(4, 2);
        var joinerUrls = await StartWorkers(JoinerId, 2, 2);
        var owners = RunWorld(4, ["p2p-owner", dir, string.Join(',', ownerUrls), "2", metas], DeviceId, transport: transport);
        await RankCluster.WaitForFileAsync(metas, owners, "the owners saved their metas");
        var ownersBefore = await BucketsLoaded(ownerUrls);

        var joiners = await RunWorld(2, ["p2p-join", string.Join(',', joinerUrls), "2", metas], JoinerId, transport: transport);
        File.WriteAllText(metas + ".done", "");
        var ownerResults = await owners;

        foreach (var r in joiners)
        {
            Assert.True(r.ExitCode == 0 && r.Line("update 1 ").StartsWith("update 1 ok", StringComparison.Ordinal), $"joiner {r.Rank}:\n{r.Output}");
            Assert.EndsWith($" over {transport}", r.Line("update 1 "));
            Assert.Equal("path 1 in-staging", r.Line("path 1 ")); // One host: the joiners' workers read each bucket where its reader put it.
        }
        Assert.All(ownerResults, r => Assert.True(r.ExitCode == 0, $"owner {r.Rank}:\n{r.Output}"));
        await AssertWorkersHold(dir, joinerUrls, 2);
        await AssertWorkersHold(dir, ownerUrls, 4);
        Assert.Equal(ownersBefore, await BucketsLoaded(ownerUrls)); // Owners' workers received nothing during the join.
    }

    /// <summary>
    /// A shard-aware join: the joining engine's shards (TP 2) declare their slices from its second update, so each joiner then reads
    /// its buckets from the owners and hands the other joiner only that joiner's part. Every shard holds exactly its slices, and each
    /// worker took in less than the whole checkpoint it took the first time. With the two joiners on two hosts, each joiner's class
    /// relays its part of the buckets the other read to it.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Join_ShardAwareJoiners_EachShardHoldsItsSlices(bool twoHosts)
    {
        var dir = WriteLayers();
        var metas = Path.Combine(_dir, "metas.json");
        var ownerUrls = await StartWorkers(2, 2);
        var joinerUrls = await StartWorkers(JoinerId, 2, 2, "--shard-by-tp");
        var owners = RunWorld(2, ["p2p-owner", dir, string.Join(',', ownerUrls), "2", metas], DeviceId);
        await RankCluster.WaitForFileAsync(metas, owners, "the owners saved their metas");
        var joiners = await RunWorld(2, ["p2p-join", string.Join(',', joinerUrls), "2", metas], JoinerId, updates: 2,
            hostId: twoHosts ? r => $"e2e-{_id}-joiner-host{r}" : null);
        File.WriteAllText(metas + ".done", "");
        Assert.All(await owners, r => Assert.True(r.ExitCode == 0, $"owner {r.Rank}:\n{r.Output}"));
        long Bytes(RankCluster.Result r, int update) => long.Parse(r.Line($"update {update} ok").Split(' ')[3], System.Globalization.CultureInfo.InvariantCulture);
        foreach (var r in joiners)
        {
            Assert.True(r.ExitCode == 0 && r.Line("update 2 ").StartsWith("update 2 ok", StringComparison.Ordinal), $"joiner {r.Rank}:\n{r.Output}");
            Assert.True(Bytes(r, 2) < Bytes(r, 1) * 0.6, $"joiner {r.Rank}: {Bytes(r, 2)} of {Bytes(r, 1)} bytes in its declared update");
            var network = r.Line("network 2 ").Split(' ');
            Assert.True(twoHosts == (int.Parse(network[3], System.Globalization.CultureInfo.InvariantCulture) > 0), $"joiner {r.Rank}: {r.Line("network 2 ")}");
        }
        await ReferenceWorkers.AssertSlicesAssembleAsync(dir, joinerUrls);
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Join_OwnerDiesDuringTheReads_JoinersFailNamingIt(string transport)
    {
        // 64 KiB buckets over ~0.5 MiB and a worker that takes 300 ms per bucket: the join lasts seconds.
        var dir = WriteCheckpoint(tiny: 2000, bigBytes: 32 << 10);
        var metas = Path.Combine(_dir, "metas.json");
        var ownerUrls = await StartWorkers(2, 2);
        var joinerUrls = await StartWorkers(JoinerId, 2, 2, "--reload-delay-ms", "300");
        var killOwners = new TaskCompletionSource();
        var owners = RunWorld(2, ["p2p-owner", dir, string.Join(',', ownerUrls), "2", metas], DeviceId, killOwners.Task, SmallBuckets, transport: transport);
        await RankCluster.WaitForFileAsync(metas, owners, "the owners saved their metas");
        // The joiners' deadline lies beyond the cluster's: a joiner that waited for it would be killed and print no result.
        var started = Path.Combine(_dir, "joining");
        var joiners = RunWorld(2, ["p2p-join", string.Join(',', joinerUrls), "2", metas, started], JoinerId, maxBucketGb: SmallBuckets, timeoutS: NeverReached, transport: transport);
        // Each joiner marks the moment its update triggers its worker; its reads then follow at the worker's pace
        // (two buckets staged ahead, 300 ms per reload), so most of them are still to come.
        await RankCluster.WaitForFileAsync(started + ".0", joiners, "the joiners' updates started");
        await RankCluster.WaitForFileAsync(started + ".1", joiners, "the joiners' updates started");
        killOwners.SetResult(); // Every owner process, mid-update.
        await owners;
        var results = await joiners;
        foreach (var r in results)
        {
            var line = r.Line("update 1 ");
            Assert.True(line.StartsWith("update 1 failed", StringComparison.Ordinal), $"joiner {r.Rank}:\n{r.Output}");
            Assert.Contains("P2P owner", line);
        }
    }

    private const string SmallBuckets = "0.00006103515625"; // 64 KiB
}
