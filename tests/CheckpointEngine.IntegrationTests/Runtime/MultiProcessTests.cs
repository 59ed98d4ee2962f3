namespace CheckpointEngine.IntegrationTests.Runtime;

/// <summary>Real rank processes on loopback. One at a time: each run takes every core.</summary>
[Collection(nameof(MultiProcessTests))]
[CollectionDefinition(nameof(MultiProcessTests), DisableParallelization = true)]
public sealed class MultiProcessTests
{
    private static Dictionary<string, string> Env(params (string Key, string Value)[] pairs) => pairs.ToDictionary(p => p.Key, p => p.Value);

    private static void AssertAllSucceeded(RankCluster.Result[] results)
    {
        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
        }
    }

    [Theory]
    [InlineData(2, 0)]
    [InlineData(4, 0)]
    [InlineData(4, 2)]
    [InlineData(8, 3)]
    public async Task Collectives_AreBitExactOnEveryRank(int ranks, int ranksPerHost)
    {
        // ranksPerHost > 0 pretends ranks live on different hosts: TCP chain between hosts, shared memory within.
        var results = await RankCluster.RunAsync(ranks, ["collectives"],
            r => ranksPerHost > 0 ? Env(("CKPT_ENGINE_HOST_ID", $"host{r / ranksPerHost}")) : null);
        AssertAllSucceeded(results);
        Assert.Single(results.Select(r => r.Line("allgather")).Distinct());
        Assert.All(results, r => Assert.Contains("broadcast ok", r.Output));
    }

    /// <param name="ranksPerHost">3: ranks 0, 2 share a host and 4 is alone on another in the sub-group 0, 2, 4 (a class relay's shape): all three meet in its ring's barriers.</param>
    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public async Task SubGroups_RepeatedWithoutKeyClashes(int ranksPerHost)
    {
        var results = await RankCluster.RunAsync(5, ["subgroups"], r => ranksPerHost > 0 ? Env(("CKPT_ENGINE_HOST_ID", $"host{r / ranksPerHost}"), ("TEST_TIMEOUT_S", "20")) : null);
        AssertAllSucceeded(results);
        Assert.Equal("subgroups ok 0,2,4", results[0].Line("subgroups"));
        Assert.Equal("subgroups ok 1,3", results[1].Line("subgroups"));
    }

    [Theory]
    [InlineData("allgather", 2)]
    [InlineData("broadcast", 2)]
    [InlineData("broadcast", 0)]
    public async Task KilledRank_OthersFailFastNamingIt(string step, int victim)
    {
        var results = await RankCluster.RunAsync(4, ["die", victim.ToString(System.Globalization.CultureInfo.InvariantCulture), step],
            _ => Env(("TEST_TIMEOUT_S", "600"))); // Past the cluster's own limit: a rank that waited for it would be killed, not exit 3.
        Assert.Equal(137, results[victim].ExitCode);
        foreach (var r in results.Where(r => r.Rank != victim))
        {
            Assert.True(r.ExitCode == 3, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.True(r.Line("error").Contains($"rank {victim}", StringComparison.Ordinal), $"rank {r.Rank}:\n{r.Output}");
        }
    }

    [Fact]
    public async Task HungRank_OthersFailAtTheDeadlineNamingIt()
    {
        // The survivors leave at once; rank 0 would keep the store up for the hung rank for the connect timeout.
        var results = await RankCluster.RunAsync(3, ["die", "1", "hang"], _ => Env(("TEST_TIMEOUT_S", "2"), ("CKPT_ENGINE_CONNECT_TIMEOUT_S", "10")), waitFor: r => r != 1);
        foreach (var r in results.Where(r => r.Rank != 1))
        {
            Assert.Equal(3, r.ExitCode);
            Assert.Contains("ranks 1 did not arrive within 2.0 s", r.Line("error"));
        }
    }

    [Fact]
    public async Task WrongToken_IsRefused()
    {
        var results = await RankCluster.RunAsync(2, ["join"],
            r => Env(("CKPT_ENGINE_TOKEN", r == 0 ? "secret" : "guess"), ("CKPT_ENGINE_CONNECT_TIMEOUT_S", "3")));
        Assert.Equal(3, results[1].ExitCode);
        Assert.Contains("wrong token", results[1].Line("error"));
        // Rank 0 gives up on the refused rank at its rendezvous deadline, naming it.
        Assert.Equal(3, results[0].ExitCode);
        Assert.Contains("ranks 1 did not arrive", results[0].Line("error"));
    }

    [Fact]
    public async Task SameToken_IsAccepted()
    {
        var results = await RankCluster.RunAsync(3, ["join"], _ => Env(("CKPT_ENGINE_TOKEN", "secret")));
        AssertAllSucceeded(results);
    }

    [Fact]
    public async Task Runs_LeaveNoSharedMemorySegments()
    {
        var before = Directory.GetFiles("/dev/shm", "ckpt-engine-*").ToHashSet();
        AssertAllSucceeded(await RankCluster.RunAsync(3, ["collectives"]));
        await RankCluster.RunAsync(3, ["die", "1", "broadcast"], _ => Env(("TEST_TIMEOUT_S", "30")));
        // Every rank has exited: a segment of theirs left behind would be one nobody holds (a live
        // creator, say of another test run on this host, holds its segment's lock).
        Assert.DoesNotContain(Directory.GetFiles("/dev/shm", "ckpt-engine-*"), f => !before.Contains(f) && NobodyHolds(f));
    }

    private static bool NobodyHolds(string path)
    {
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return CheckpointEngine.Interop.Libc.flock((int)file.SafeFileHandle.DangerousGetHandle(), CheckpointEngine.Interop.Libc.LOCK_EX | CheckpointEngine.Interop.Libc.LOCK_NB) == 0;
        }
        catch (IOException)
        {
            return false; // Gone meanwhile, or locked (.NET's own share lock).
        }
    }
}
