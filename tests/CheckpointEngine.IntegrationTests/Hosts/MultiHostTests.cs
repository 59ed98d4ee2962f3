using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting.Tracing;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.IntegrationTests.Server;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Tests.Support;

namespace CheckpointEngine.IntegrationTests.Hosts;

/// <summary>
/// Ranks and reference workers on real hosts built on this machine (<see cref="NetnsHosts"/>): two ranks and one
/// worker (TP 2) per host, each host with its own address, <c>/dev/shm</c> and hostname, a token on every rank.
/// Skipped, saying why, where namespaces cannot be made (not root).
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class MultiHostTests : IDisposable
{
    private const int RanksPerHost = 2;
    private const string Token = "multi-host-test-token";
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-hosts-").FullName;
    private readonly string _id = Guid.NewGuid().ToString("N")[..8];
    private readonly List<Process> _workers = [];
    private NetnsHosts? _hosts;

    public void Dispose()
    {
        TestProcess.KillAndDispose(_workers);
        _hosts?.Dispose();
        Directory.Delete(_dir, true);
    }

    private NetnsHosts Hosts(int count)
    {
        NetnsHosts.SkipUnlessAvailable();
        return _hosts = NetnsHosts.Create(count);
    }

    /// <summary>About <paramref name="mib"/> MiB in projection weights (sliced by a <c>--shard-by-tp</c> worker) of mixed sizes, some over the 1 MiB bucket, in 2 files.</summary>
    /// <param name="small">Tensors of at most 64 KiB only, so that small buckets make many.</param>
    private string WriteCheckpoint(int mib = 6, bool small = false)
    {
        var rng = new Random(21);
        var tensors = new List<TensorToWrite>();
        for (long i = 0, total = 0; total < (long)mib << 20; i++)
        {
            var bytes = new byte[i % 5 == 0 && !small ? (3 << 19) + 1024 * i : 4096 + 1024 * (i % 60)];
            rng.NextBytes(bytes);
            total += bytes.Length;
            tensors.Add(TensorToWrite.FromBytes($"layers.{i:D3}.{(i % 2 == 0 ? "q_proj" : "o_proj")}.weight", DType.BF16, [bytes.Length / 512, 256], bytes));
        }
        var dir = Path.Combine(_dir, "ckpt");
        Directory.CreateDirectory(dir);
        SafeTensorsWriter.Write(Path.Combine(dir, "part-0.safetensors"), tensors[..(tensors.Count / 2)]);
        SafeTensorsWriter.Write(Path.Combine(dir, "part-1.safetensors"), tensors[(tensors.Count / 2)..]);
        return dir;
    }

    private string DeviceId(string world, int rank) => $"mh-{_id}-{world}{rank}";

    /// <summary>One reference worker (TP 2) on each of <paramref name="hosts"/>, for the ranks <c>world</c>{2g, 2g+1} of group g.</summary>
    private async Task<string[]> StartWorkers(NetnsHosts net, string world, int[] hosts, params string[] extra)
    {
        var urls = new List<string>();
        foreach (var (h, g) in hosts.Select((h, g) => (h, g)))
        {
            urls.Add(await StartWorker(net, world, h, g, extra));
        }
        return [.. urls];
    }

    private Task<string> StartWorker(NetnsHosts net, string world, int host, int group, params string[] extra)
    {
        var psi = ReferenceWorkers.Start(Enumerable.Range(group * RanksPerHost, RanksPerHost).Select(r => DeviceId(world, r)), extra);
        net.Place(host, psi);
        return ReferenceWorkers.RunAsync(psi, _workers);
    }

    /// <summary>A world of two ranks on each of <paramref name="hosts"/>, its store on the first; rank r runs on hosts[r / 2].</summary>
    private Task<RankCluster.Result[]> RunWorld(NetnsHosts net, string world, int[] hosts, string[] args, Func<int, string?>? tokenOf = null,
        string timeoutS = "20", string transport = P2PStores.Tcp, string connectTimeoutS = "15", string? ucxTls = null,
        string maxBucketGb = "0.0009765625" /* 1 MiB */, string? trace = null, int updates = 1) =>
        RankCluster.RunAsync(hosts.Length * RanksPerHost, args, r =>
        {
            var env = new Dictionary<string, string>
            {
                ["MASTER_ADDR"] = net.Addresses[hosts[0]].ToString(),
                ["LOCAL_WORLD_SIZE"] = RanksPerHost.ToString(CultureInfo.InvariantCulture),
                ["CKPT_ENGINE_CONNECT_TIMEOUT_S"] = connectTimeoutS,
                ["CKPT_ENGINE_DEVICE_ID"] = DeviceId(world, r),
                ["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = maxBucketGb,
                [P2PTransports.Variable] = transport,
                ["TEST_TIMEOUT_S"] = timeoutS,
                ["TEST_UPDATES"] = updates.ToString(CultureInfo.InvariantCulture),
            };
            if (ucxTls is not null)
            {
                env["UCX_TLS"] = ucxTls;
            }
            if (trace is not null)
            {
                env["TEST_TRACE_FILE"] = trace;
            }
            if ((tokenOf is null ? Token : tokenOf(r)) is { } token)
            {
                env["CKPT_ENGINE_TOKEN"] = token;
            }
            return env;
        }, place: (r, psi) => net.Place(hosts[r / RanksPerHost], psi));

    private static string[] UpdateArgs(string dir, string[] urls, int updates) =>
        ["update", dir, string.Join(',', urls), RanksPerHost.ToString(CultureInfo.InvariantCulture), updates.ToString(CultureInfo.InvariantCulture)];

    private static Task AssertHold(NetnsHosts net, string dir, int[] hosts, string[] urls) =>
        ReferenceWorkers.AssertHoldAsync(dir, urls.Select((u, g) => (u, (HttpClient?)net.Http(hosts[g]))), hosts.Length * RanksPerHost);

    private static void AssertOk(RankCluster.Result[] results, int update = 1)
    {
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0 && r.Line($"update {update} ").StartsWith($"update {update} ok", StringComparison.Ordinal), $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
        }
    }

    /// <summary>"network U BYTES RELAYED": bytes this rank took from other hosts over data links in update U.</summary>
    private static long NetworkBytes(RankCluster.Result r, int update = 1) =>
        long.Parse(r.Line($"network {update} ").Split(' ')[2], CultureInfo.InvariantCulture);

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Broadcast_AcrossHosts_BitExact_SameHostOverSharedMemory_CrossHostOverTheNetwork(int count)
    {
        var net = Hosts(count);
        var dir = WriteCheckpoint();
        var hosts = Enumerable.Range(0, count).ToArray();
        var urls = await StartWorkers(net, "b", hosts);
        var results = await RunWorld(net, "b", hosts, UpdateArgs(dir, urls, 1));
        AssertOk(results);
        await AssertHold(net, dir, hosts, urls);
        // Each host's leader takes the other hosts' buckets from the network; its peer gets them through shared memory.
        Assert.All(results, r => Assert.True(r.Rank % RanksPerHost == 0 ? NetworkBytes(r) > 0 : NetworkBytes(r) == 0, $"rank {r.Rank}: {r.Line("network 1")}"));
    }

    [Fact]
    public async Task ShardAware_AcrossHosts_ClassesRelayTheirPartsOverTheNetwork()
    {
        var net = Hosts(2);
        var dir = WriteCheckpoint();
        int[] hosts = [0, 1];
        var urls = await StartWorkers(net, "s", hosts, "--shard-by-tp");
        var results = await RunWorld(net, "s", hosts, UpdateArgs(dir, urls, 2));
        AssertOk(results, 1);
        AssertOk(results, 2);
        // The second update knows each worker's wants: every rank takes its own class's part from the other host.
        Assert.All(results, r => Assert.True(NetworkBytes(r, 2) > 0 && int.Parse(r.Line("network 2 ").Split(' ')[3], CultureInfo.InvariantCulture) > 0, $"rank {r.Rank}: {r.Line("network 2")}"));
        var host0 = NetworkBytes(results[0], 1);
        Assert.True(NetworkBytes(results[0], 2) + NetworkBytes(results[1], 2) <= host0, $"host 0 took {results[0].Line("network 2")} + {results[1].Line("network 2")} against {host0} whole");
        // Every shard holds exactly the bytes of its slices (each tensor's slice cut out of the source, packed), none of the others'.
        var slices = Enumerable.Range(0, RanksPerHost).Select(i => ReferenceWorkers.SliceDigests(dir, i, RanksPerHost)).ToArray();
        Assert.NotEqual(slices[0].OrderBy(kv => kv.Key, StringComparer.Ordinal), slices[1].OrderBy(kv => kv.Key, StringComparer.Ordinal));
        foreach (var (url, g) in urls.Select((u, g) => (u, g)))
        {
            using var http = net.Http(hosts[g]);
            var shards = await ReferenceWorkers.DigestsAsync(url, http);
            Assert.Equal(RanksPerHost, shards.Count);
            foreach (var i in Enumerable.Range(0, RanksPerHost))
            {
                Assert.Equal(slices[i].OrderBy(kv => kv.Key, StringComparer.Ordinal), shards[DeviceId("s", g * RanksPerHost + i)].OrderBy(kv => kv.Key, StringComparer.Ordinal));
            }
        }
    }

    /// <summary>Owners on hosts 0 and 1; a new instance on host 2, which was never part of their world, joins by P2P reads over the network.</summary>
    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Join_FromAHostOutsideTheFleet_ReadsTheOwnersOverTheNetwork(string transport)
    {
        var net = Hosts(3);
        var dir = WriteCheckpoint(mib: 32);
        var (joiner, metas) = await JoinAsync(net, dir, transport, "0.0009765625" /* 1 MiB */);
        var perWorker = PerWorker(joiner);
        var raw = await RawStream(net, 0, 2, 64L << 20);
        TestContext.Current.TestOutputHelper?.WriteLine($"P2P join over {transport}: raw TCP {raw / 1e9:F3} GB/s; per worker {perWorker / 1e9:F3} GB/s ({perWorker / raw:F2}x raw)");
        // Every owner published an address of its own host: host 2 has no other way to their memory than its link.
        Assert.Contains($"\"{net.Addresses[0]}", metas);
        Assert.Contains($"\"{net.Addresses[1]}", metas);
    }

    /// <summary>
    /// Owners (world "o", a worker each) on hosts 0 and 1 of <paramref name="net"/>; a joiner world ("j") on host 2 reads
    /// <paramref name="dir"/> from them over <paramref name="transport"/>, <paramref name="updates"/> times; its worker holds every
    /// tensor bit-exact. Returns the joiners' rank 0 (see <see cref="PerWorker"/>) and the owners' metas (JSON).
    /// </summary>
    private async Task<(RankCluster.Result Joiner, string Metas)> JoinAsync(NetnsHosts net, string dir, string transport, string maxBucketGb, string tag = "", int updates = 1)
    {
        if (transport == P2PStores.Ucx)
        {
            P2PStores.RequireUcx();
        }
        var metas = Path.Combine(_dir, $"metas{tag}{transport}.json");
        var ownerUrls = await StartWorkers(net, $"o{tag}{transport}", [0, 1]);
        var joinerUrls = await StartWorkers(net, $"j{tag}{transport}", [2]);
        var owners = RunWorld(net, $"o{tag}{transport}", [0, 1], ["p2p-owner", dir, string.Join(',', ownerUrls), "2", metas], transport: transport,
            ucxTls: UcxAcrossHosts(transport), maxBucketGb: maxBucketGb, timeoutS: "120");
        await RankCluster.WaitForFileAsync(metas, owners, "the owners saved their metas");
        var joiners = await RunWorld(net, $"j{tag}{transport}", [2], ["p2p-join", string.Join(',', joinerUrls), "2", metas], transport: transport,
            ucxTls: UcxAcrossHosts(transport), maxBucketGb: maxBucketGb, timeoutS: "120", updates: updates);
        File.WriteAllText(metas + ".done", "");
        var ownerResults = await owners;
        foreach (var r in joiners)
        {
            Assert.True(r.ExitCode == 0 && r.Line($"update {updates} ").EndsWith($" over {transport}", StringComparison.Ordinal), $"joiner {r.Rank}:\n{r.Output}");
        }
        Assert.All(ownerResults, r => Assert.True(r.ExitCode == 0, $"owner {r.Rank}:\n{r.Output}"));
        await AssertHold(net, dir, [2], joinerUrls);
        return (joiners[0], File.ReadAllText(metas));
    }

    /// <summary>Bytes per second per worker of update <paramref name="u"/> ("update U ok BYTES SECONDS ...").</summary>
    private static double PerWorker(RankCluster.Result r, int u = 1)
    {
        var f = r.Line($"update {u} ok").Split(' ');
        return long.Parse(f[3], CultureInfo.InvariantCulture) / double.Parse(f[4], CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Between hosts without RDMA devices UCX has only its TCP transport, which the default (<c>^tcp</c>: its emulated
    /// one-sided reads do not check remote keys) leaves out; a user of such hosts opts in with UCX_TLS, as here.
    /// </summary>
    private static string? UcxAcrossHosts(string transport) => transport == P2PStores.Ucx ? "tcp" : null;

    [Fact]
    public async Task Token_IsRequiredOnRoutableAddresses_AndAWrongOneIsRefused()
    {
        var net = Hosts(2);
        int[] hosts = [0, 1];
        var none = await RunWorld(net, "t", hosts, ["join"], tokenOf: _ => null);
        Assert.All(none, r => Assert.True(r.ExitCode != 0 && r.Output.Contains("CKPT_ENGINE_TOKEN is not set", StringComparison.Ordinal), $"rank {r.Rank}:\n{r.Output}"));

        var wrong = await RunWorld(net, "t", hosts, ["join"], tokenOf: r => r == 3 ? "not-the-token" : Token, connectTimeoutS: "5");
        Assert.True(wrong[3].ExitCode != 0, $"rank 3 joined with a wrong token:\n{wrong[3].Output}");
        Assert.Contains($"the rendezvous store at {net.Addresses[0]}:", wrong[3].Line("error "));
        Assert.Contains("refused rank 3: wrong token", wrong[3].Line("error "));
        Assert.All(wrong[..3], r => Assert.True(r.ExitCode != 0, $"rank {r.Rank} formed a world without rank 3:\n{r.Output}"));

        var right = await RunWorld(net, "t", hosts, ["join"]);
        Assert.All(right, r => Assert.True(r.ExitCode == 0, $"rank {r.Rank}:\n{r.Output}"));
    }

    /// <summary>
    /// Host 1's cable is pulled while the update is under way (slow workers): every rank on both sides fails within its
    /// deadline, naming host 1's ranks or address; with the cable back, the next world's update succeeds.
    /// </summary>
    [Fact]
    public async Task Partition_LinkDownMidUpdate_EveryRankFailsNamingTheHost_NextUpdateSucceeds()
    {
        var net = Hosts(2);
        var dir = WriteSmallTensors();
        int[] hosts = [0, 1];
        var urls = await StartWorkers(net, "p", hosts, "--reload-delay-ms", "200");
        var running = RunWorld(net, "p", hosts, UpdateArgs(dir, urls, 1), timeoutS: "8", maxBucketGb: SmallBuckets);
        await WaitForTraffic(net, 1, 300_000, running); // Of about 1.5 MB that host 1 takes in.
        net.SetLink(1, up: false);
        var results = await running;
        foreach (var r in results)
        {
            var failed = r.Line("update 1 ").StartsWith("update 1 failed", StringComparison.Ordinal) || r.Line("error ").Length > 0;
            Assert.True(r.ExitCode != -1 && failed, $"rank {r.Rank} exited {r.ExitCode} (−1: still running at the cluster's deadline):\n{r.Output}");
            Assert.True(NamesHost1(net, r.Output), $"rank {r.Rank} does not name host 1 (ranks 2, 3 or {net.Addresses[1]}):\n{r.Output}");
        }
        AssertNoRankLeft(net, 0, 1);

        net.SetLink(1, up: true);
        var again = await RunWorld(net, "p", hosts, UpdateArgs(dir, urls, 1));
        AssertOk(again);
        await AssertHold(net, dir, hosts, urls);
    }

    /// <summary>Every process of host 1 (ranks and worker) is SIGKILLed together mid-update: host 0's ranks fail naming them; a new world on fresh processes works.</summary>
    [Fact]
    public async Task HostKilled_MidUpdate_SurvivorsFailNamingItsRanks_NextUpdateSucceeds()
    {
        var net = Hosts(2);
        var dir = WriteSmallTensors();
        int[] hosts = [0, 1];
        var urls = await StartWorkers(net, "k", hosts, "--reload-delay-ms", "200");
        var running = RunWorld(net, "k", hosts, UpdateArgs(dir, urls, 1), timeoutS: "600", maxBucketGb: SmallBuckets); // The cluster kills anything that waits for this.
        await WaitForTraffic(net, 1, 300_000, running); // Of about 1.5 MB that host 1 takes in.
        net.KillHost(1);
        var results = await running;
        foreach (var r in results[..2])
        {
            Assert.True(r.ExitCode == 3, $"rank {r.Rank} exited {r.ExitCode} (−1: still waiting at the cluster's deadline):\n{r.Output}");
            Assert.True(NamesHost1(net, r.Output), $"rank {r.Rank} does not name host 1's ranks:\n{r.Output}");
        }
        AssertNoRankLeft(net, 0, 1);

        urls[1] = await StartWorker(net, "k", 1, 1, "--reload-delay-ms", "200");
        var again = await RunWorld(net, "k", hosts, UpdateArgs(dir, urls, 1));
        AssertOk(again);
        await AssertHold(net, dir, hosts, urls);
    }

    /// <summary>
    /// Cross-host broadcast against a raw TCP stream over the same link in the same run, with the link as veth gives it
    /// and limited to 400 Mbit/s by tc tbf (host 1, both ways). Host 1's leader takes every byte of host 0 over that link,
    /// so its network rate cannot beat the raw stream's; the figures go to the test output (README "Several hosts").
    /// </summary>
    [Theory]
    [InlineData("off")]
    [InlineData("400mbit")]
    public async Task Broadcast_OverAShapedLink_CrossHostLegRunsAtTheLinkRate(string rate)
    {
        var net = Hosts(2);
        net.Shape(1, rate);
        var dir = WriteCheckpoint(mib: 32);
        var raw = await RawStream(net, 0, 1, 64L << 20);
        var (perWorker, network, _) = await BroadcastAsync(net, dir, "0.0078125" /* 8 MiB */);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"link {rate}: raw TCP {raw / 1e9:F3} GB/s; per worker {perWorker / 1e9:F3} GB/s ({perWorker / raw:F2}x raw); host 1's network leg {network / 1e9:F3} GB/s ({network / raw:F2}x raw)");
        Assert.True(network <= raw * 1.25, $"host 1 took {network / 1e9:F3} GB/s over a link that streams {raw / 1e9:F3} GB/s");
    }

    /// <summary>
    /// Two updates of <paramref name="dir"/> by two ranks on each of hosts 0 and 1 (a worker each), the second measured and traced
    /// (when <paramref name="trace"/> is given): every shard bit-exact; returns bytes per second per worker, host 1's leader's network
    /// ingress rate and the trace's slowest link.
    /// </summary>
    private async Task<(double PerWorker, double Network, string? SlowestLink)> BroadcastAsync(NetnsHosts net, string dir, string maxBucketGb, string? trace = null, string tag = "")
    {
        int[] hosts = [0, 1];
        var urls = await StartWorkers(net, $"r{tag}", hosts);
        var results = await RunWorld(net, $"r{tag}", hosts, UpdateArgs(dir, urls, 2), timeoutS: "120", maxBucketGb: maxBucketGb, trace: trace);
        AssertOk(results, 2);
        await AssertHold(net, dir, hosts, urls);
        var f = results[2].Line("update 2 ok").Split(' ');
        var seconds = double.Parse(f[4], CultureInfo.InvariantCulture);
        var slowest = trace is null ? null : LinkLegs(UpdateTrace.PathFor(trace, "2")).Slowest;
        return (long.Parse(f[3], CultureInfo.InvariantCulture) / seconds, NetworkBytes(results[2], 2) / seconds, slowest);
    }

    /// <summary>
    /// Three hosts, host 1's link at 200 Mbit/s: the trace's link track says which legs of the broadcast chain are slow. Every leg
    /// into or out of host 1 crosses the shaped link, the legs between hosts 0 and 2 do not (though they carry buckets that crossed it
    /// before or will after: their receiver waits, or their sender blocks, but not both); rates compared as a ratio, never in seconds.
    /// Unshaped, veth streams 0.5–2 GB/s on a busy 2-core machine: 20–80× the shaped link; the test asks for 5×.
    /// </summary>
    [Fact]
    public async Task Trace_OverAShapedLink_NamesTheShapedHostsLegsAsTheSlowOnes()
    {
        var net = Hosts(3);
        net.Shape(1, "200mbit");
        var dir = WriteCheckpoint(mib: 24);
        int[] hosts = [0, 1, 2];
        var urls = await StartWorkers(net, "l", hosts);
        var trace = Path.Combine(_dir, "trace.json");
        var results = await RunWorld(net, "l", hosts, UpdateArgs(dir, urls, 1), timeoutS: "120", maxBucketGb: "0.0078125" /* 8 MiB */, trace: trace);
        AssertOk(results);
        await AssertHold(net, dir, hosts, urls);
        var file = UpdateTrace.PathFor(trace, "1");
        var (legs, slowest) = LinkLegs(file);
        var host1 = net.Addresses[1].ToString();
        var shaped = legs.Where(l => l.Link.Split(" → ").Contains(host1)).ToList();
        var free = legs.Except(shaped).ToList();
        var table = string.Join("\n", legs.Select(l => $"{l.Link}: {l.Bytes} bytes, {l.Rate / 1e9:F4} GB/s"));
        TestContext.Current.TestOutputHelper?.WriteLine(table);
        Assert.True(shaped.Count > 0 && free.Count > 0, $"legs both through host 1 and around it expected:\n{table}");
        Assert.True(shaped.Max(l => l.Rate) * 5 < free.Min(l => l.Rate), $"the legs through host 1 ({host1}) are not the slow ones:\n{table}");
        Assert.Contains(host1, slowest);
        // Each rank's own report names the same: its legs to or from host 1 are slower than those around it (per peer host, both ends' lines).
        var lines = results.SelectMany(r => r.Output.Split('\n').Where(l => l.StartsWith("link 1 ", StringComparison.Ordinal))).ToList();
        Assert.Contains(lines, l => l.Contains($" {host1} ", StringComparison.Ordinal));

        var svg = Path.Combine(_dir, "trace.svg");
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync("trace", "render", file, "--out", svg);
        Assert.True(code == 0, stderr + stdout);
        var drawn = System.Xml.Linq.XDocument.Load(svg).Descendants(System.Xml.Linq.XName.Get("text", "http://www.w3.org/2000/svg")).Select(t => t.Value).ToList();
        Assert.Contains(drawn, t => t.StartsWith("links · ", StringComparison.Ordinal) && t.Contains(host1, StringComparison.Ordinal));
    }

    /// <summary>The link legs of a trace file, summed per link over its buckets (rate: bytes over the shorter of both ends' times), and its slowest link.</summary>
    private static (List<(string Link, long Bytes, double Rate)> Legs, string Slowest) LinkLegs(string file)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        var threads = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name")
            .ToDictionary(e => (e.GetProperty("pid").GetInt32(), e.GetProperty("tid").GetInt32()), e => e.GetProperty("args").GetProperty("name").GetString()!);
        var legs = events.Where(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("cat").GetString() == "link")
            .GroupBy(e => threads[(e.GetProperty("pid").GetInt32(), e.GetProperty("tid").GetInt32())])
            .Select(g =>
            {
                var bytes = g.Sum(e => e.GetProperty("args").GetProperty("bytes").GetInt64());
                var us = Math.Min(g.Sum(e => e.GetProperty("args").GetProperty("sender_us").GetDouble()), g.Sum(e => e.GetProperty("args").GetProperty("receiver_us").GetDouble()));
                return (g.Key, bytes, us > 0 ? bytes / us * 1e6 : double.PositiveInfinity);
            }).ToList();
        return (legs, doc.RootElement.GetProperty("otherData").GetProperty("slowest_link").GetString()!);
    }

    /// <summary>
    /// The cross-host bench (<c>scripts/hosts.sh bench</c> runs it; skipped otherwise): three hosts, host 1's link shaped or not; one raw
    /// TCP stream over each link measured against, in the same run; a broadcast between hosts 0 and 1 (two ranks and a worker each, the
    /// second of two updates measured and traced) and a P2P join from host 2 of owners on hosts 0 and 1, per transport. Writes a
    /// Markdown table of per-worker GB/s and ratios to the raw stream. Settings from CKPT_HOSTS_BENCH_* (see the script).
    /// </summary>
    [Fact]
    public async Task Bench_AcrossHosts_PerWorkerAgainstARawStream()
    {
        Assert.SkipUnless(Environment.GetEnvironmentVariable("CKPT_HOSTS_BENCH") == "1", "a bench, not a test: scripts/hosts.sh bench runs it");
        string Setting(string name, string fallback) => Environment.GetEnvironmentVariable($"CKPT_HOSTS_BENCH_{name}") is { Length: > 0 } v ? v : fallback;
        var (mib, bucketMib, shape) = (int.Parse(Setting("MIB", "64"), CultureInfo.InvariantCulture), double.Parse(Setting("BUCKET_MIB", "8"), CultureInfo.InvariantCulture), Setting("SHAPE", "off"));
        var bucketGb = (bucketMib / 1024).ToString("R", CultureInfo.InvariantCulture);
        var net = Hosts(3);
        net.Shape(1, shape);
        var dir = WriteCheckpoint(mib);
        var link = shape == "off" ? "unshaped" : $"host 1's link at {shape} (tbf)";
        var rows = new List<string>();
        void Row(string what, double raw, double perWorker, string note = "") => // The raw stream over the link the case's bytes cross (host 1's).
            rows.Add(string.Create(CultureInfo.InvariantCulture, $"| {what} | {raw / 1e9:F3} GB/s | {perWorker / 1e9:F3} GB/s | {perWorker / raw:F2}x | {note} |"));

        var raw01 = await RawStream(net, 0, 1, 64L << 20);
        var trace = Path.Combine(_dir, "bench-trace.json");
        var (perWorker, network, slowest) = await BroadcastAsync(net, dir, bucketGb, trace);
        Row($"broadcast, hosts 0 and 1 × 2 ranks, {mib} MiB, {bucketMib} MiB buckets, {link}", raw01, perWorker,
            string.Create(CultureInfo.InvariantCulture, $"host 1's network leg {network / 1e9:F3} GB/s ({network / raw01:F2}x); slowest link in the trace {slowest}"));
        var raw12 = await RawStream(net, 1, 2, 64L << 20);
        foreach (var transport in Setting("TRANSPORTS", "tcp,ucx").Split(','))
        {
            // The first update is a cold start (connections, buffers, the worker's first attach): the second is measured, the first noted.
            var (joiner, _) = await JoinAsync(net, dir, transport, bucketGb, tag: "b", updates: 2);
            Row($"P2P join over {transport}{(transport == P2PStores.Ucx ? " (UCX_TLS=tcp)" : "")}, host 2 reads hosts 0 and 1, {mib} MiB, {bucketMib} MiB buckets, {link}", raw12, PerWorker(joiner, 2),
                string.Create(CultureInfo.InvariantCulture, $"second update: {joiner.Line("stages 2 ")}; the first (cold) {PerWorker(joiner, 1) / 1e9:F3} GB/s: {joiner.Line("stages 1 ")}"));
        }
        var table = string.Join("\n", ["| case | raw TCP stream | per worker | ratio to raw | note |", "|---|---|---|---|---|", .. rows]);
        TestContext.Current.TestOutputHelper?.WriteLine(table);
        if (Environment.GetEnvironmentVariable("CKPT_HOSTS_BENCH_OUT") is { Length: > 0 } output)
        {
            File.WriteAllText(output, table + "\n");
            File.Copy(UpdateTrace.PathFor(trace, "2"), Path.ChangeExtension(output, ".trace.json"), overwrite: true);
        }
    }

    /// <summary>Bytes per second of one TCP stream from host <paramref name="from"/> to host <paramref name="to"/> (sockets made in their namespaces).</summary>
    private static async Task<double> RawStream(NetnsHosts net, int from, int to, long bytes)
    {
        using var listener = net.Socket(to);
        listener.Bind(new System.Net.IPEndPoint(net.Addresses[to], 0));
        listener.Listen(1);
        using var client = net.Socket(from);
        var clock = Stopwatch.StartNew();
        var accept = listener.AcceptAsync(TestContext.Current.CancellationToken).AsTask();
        await client.ConnectAsync(listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        using var server = await accept;
        var send = Task.Run(async () =>
        {
            var chunk = new byte[1 << 20];
            for (long sent = 0; sent < bytes; sent += chunk.Length)
            {
                await client.SendAsync(chunk, System.Net.Sockets.SocketFlags.None);
            }
        });
        var buffer = new byte[1 << 20];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
        for (long received = 0; received < bytes;)
        {
            var n = await server.ReceiveAsync(buffer, System.Net.Sockets.SocketFlags.None, cts.Token);
            Assert.True(n > 0, "the raw stream closed early");
            received += n;
        }
        await send;
        return bytes / clock.Elapsed.TotalSeconds;
    }

    /// <summary>128 KiB: dozens of buckets, at 200 ms a reload the update lasts seconds.</summary>
    private const string SmallBuckets = "0.0001220703125";

    private string WriteSmallTensors() => WriteCheckpoint(mib: 3, small: true);

    private static bool NamesHost1(NetnsHosts net, string output) =>
        output.Contains(net.Addresses[1].ToString(), StringComparison.Ordinal) || output.Contains("rank 2", StringComparison.Ordinal) || output.Contains("rank 3", StringComparison.Ordinal);

    /// <summary>No rank process is left in these hosts (the workers stay: they are the engines).</summary>
    private static void AssertNoRankLeft(NetnsHosts net, params int[] hosts)
    {
        foreach (var h in hosts)
        {
            var left = net.Processes(h).Where(p => p.Contains("CheckpointEngine.Tests.Rank.dll", StringComparison.Ordinal) && !p.Contains(" cli worker ", StringComparison.Ordinal)).ToList();
            Assert.True(left.Count == 0, $"host {h} still runs: {string.Join("; ", left)}");
        }
    }

    /// <summary>Waits until <paramref name="bytes"/> have crossed host <paramref name="host"/>'s link (the update is under way), failing if the ranks stop first.</summary>
    private static async Task WaitForTraffic(NetnsHosts net, int host, long bytes, Task<RankCluster.Result[]> running)
    {
        var (start, clock) = (net.BytesTo(host), Stopwatch.StartNew());
        while (net.BytesTo(host) - start < bytes)
        {
            if (running.IsCompleted)
            {
                Assert.Fail($"the ranks stopped before {bytes} bytes reached host {host}:\n" + string.Join("\n", (await running).Select(r => r.Output)));
            }
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"never {bytes} bytes to host {host}");
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }
    }
}
