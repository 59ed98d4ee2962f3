using System.Collections;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Tests.Runtime;

public class RankConfigTests
{
    private static Hashtable Env(params string[] pairs)
    {
        var env = new Hashtable();
        foreach (var pair in pairs)
        {
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            env[pair[..eq]] = pair[(eq + 1)..];
        }
        return env;
    }

    [Fact]
    public void FromEnvironment_NothingSet_SingleRankOnLoopback()
    {
        var c = RankConfig.FromEnvironment(new Hashtable());
        Assert.Equal(0, c.Rank);
        Assert.Equal(1, c.WorldSize);
        Assert.Equal("127.0.0.1", c.MasterAddr);
        Assert.Equal(0, c.MasterPort);
        Assert.Equal(0, c.LocalRank);
        Assert.Equal(1, c.LocalWorldSize);
        Assert.Null(c.Token);
        Assert.Equal(TimeSpan.FromSeconds(60), c.ConnectTimeout);
    }

    [Fact]
    public void FromEnvironment_FullTorchrunSet_ReadsEveryVariable()
    {
        var c = RankConfig.FromEnvironment(Env("RANK=5", "WORLD_SIZE=8", "MASTER_ADDR=node-a", "MASTER_PORT=29500",
            "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=4", "CKPT_ENGINE_TOKEN=s3cret", "CKPT_ENGINE_CONNECT_TIMEOUT_S=7"));
        Assert.Equal(new RankConfig
        {
            Rank = 5, WorldSize = 8, MasterAddr = "node-a", MasterPort = 29500, LocalRank = 1, LocalWorldSize = 4,
            Token = "s3cret", ConnectTimeout = TimeSpan.FromSeconds(7),
        }, c);
        Assert.Contains("rank 5/8", c.ToString(), StringComparison.Ordinal);
        Assert.Contains("node-a:29500", c.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(5, 8, null, null, 5, 8)] // No local variables: one host.
    [InlineData(5, 8, "4", null, 1, 4)] // LOCAL_RANK follows from the local world size.
    [InlineData(5, 8, "4", "3", 3, 4)] // An explicit LOCAL_RANK wins.
    [InlineData(2, 3, null, "0", 0, 3)]
    public void FromEnvironment_LocalVariables_DefaultFromRankAndWorld(int rank, int world, string? localWorld, string? localRank, int expectRank, int expectWorld)
    {
        var env = Env($"RANK={rank}", $"WORLD_SIZE={world}", "MASTER_PORT=1234");
        env["LOCAL_WORLD_SIZE"] = localWorld;
        env["LOCAL_RANK"] = localRank;
        var c = RankConfig.FromEnvironment(env);
        Assert.Equal(expectRank, c.LocalRank);
        Assert.Equal(expectWorld, c.LocalWorldSize);
    }

    [Fact]
    public void FromEnvironment_BlankOrPaddedValues_BlankIsUnsetPaddingTrimmed()
    {
        var c = RankConfig.FromEnvironment(Env("RANK=  ", "WORLD_SIZE= 3 ", "MASTER_PORT=\t80\n", "MASTER_ADDR= ", "CKPT_ENGINE_TOKEN="));
        Assert.Equal(0, c.Rank);
        Assert.Equal(3, c.WorldSize);
        Assert.Equal(80, c.MasterPort);
        Assert.Equal("127.0.0.1", c.MasterAddr);
        Assert.Null(c.Token);
    }

    [Fact]
    public void FromEnvironment_SingleRankWithPort_UsesIt()
    {
        Assert.Equal(4000, RankConfig.FromEnvironment(Env("MASTER_PORT=4000")).MasterPort);
        Assert.Equal(0, RankConfig.FromEnvironment(Env("WORLD_SIZE=1", "MASTER_PORT=0")).MasterPort);
    }

    [Theory]
    [InlineData("RANK=abc", new[] { "RANK=abc" })]
    [InlineData("RANK=-1", new[] { "RANK=-1" })]
    [InlineData("RANK=2;WORLD_SIZE=2;MASTER_PORT=1", new[] { "RANK=2", "WORLD_SIZE=2" })]
    [InlineData("RANK=1", new[] { "RANK=1", "WORLD_SIZE=1" })]
    [InlineData("WORLD_SIZE=0", new[] { "WORLD_SIZE=0" })]
    [InlineData("WORLD_SIZE=two", new[] { "WORLD_SIZE=two" })]
    [InlineData("WORLD_SIZE=2;RANK=1", new[] { "MASTER_PORT", "WORLD_SIZE=2" })]
    [InlineData("WORLD_SIZE=2;MASTER_PORT=0", new[] { "MASTER_PORT=0" })]
    [InlineData("MASTER_PORT=70000", new[] { "MASTER_PORT=70000", "65535" })]
    [InlineData("WORLD_SIZE=2;MASTER_PORT=70000", new[] { "MASTER_PORT=70000" })]
    [InlineData("MASTER_PORT=http", new[] { "MASTER_PORT=http" })]
    [InlineData("CKPT_ENGINE_CONNECT_TIMEOUT_S=soon", new[] { "CKPT_ENGINE_CONNECT_TIMEOUT_S=soon" })]
    [InlineData("CKPT_ENGINE_CONNECT_TIMEOUT_S=0", new[] { "CKPT_ENGINE_CONNECT_TIMEOUT_S=0" })]
    [InlineData("CKPT_ENGINE_CONNECT_TIMEOUT_S=1.5", new[] { "CKPT_ENGINE_CONNECT_TIMEOUT_S=1.5" })]
    [InlineData("WORLD_SIZE=4;MASTER_PORT=1;LOCAL_WORLD_SIZE=5", new[] { "LOCAL_WORLD_SIZE=5", "WORLD_SIZE=4" })]
    [InlineData("WORLD_SIZE=4;MASTER_PORT=1;LOCAL_WORLD_SIZE=2;LOCAL_RANK=2", new[] { "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2" })]
    [InlineData("CKPT_ENGINE_ALLOW_NO_TOKEN=yes", new[] { "CKPT_ENGINE_ALLOW_NO_TOKEN=yes", "neither 1 nor 0" })]
    public void FromEnvironment_InvalidVariable_ThrowsNamingVariableAndValue(string pairs, string[] expected)
    {
        var e = Assert.Throws<CheckpointEngineException>(() => RankConfig.FromEnvironment(Env(pairs.Split(';'))));
        foreach (var part in expected)
        {
            Assert.Contains(part, e.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(null, false)]
    [InlineData("0", false)]
    [InlineData("1", true)]
    public void FromEnvironment_AllowNoToken_OnlyWhenOne(string? value, bool expected) =>
        Assert.Equal(expected, RankConfig.FromEnvironment(value is null ? Env() : Env($"CKPT_ENGINE_ALLOW_NO_TOKEN={value}")).AllowNoToken);

    [Fact]
    public void FromEnvironment_RegistrationSettings_AreRead()
    {
        var c = RankConfig.FromEnvironment(Env(
            "CKPT_ENGINE_REGISTRATION_BUDGET_GB=1.5",
            "CKPT_ENGINE_ALLOW_DIRS=/data/models: /dev/shm/ckpt :",
            "CKPT_ENGINE_ALLOW_ENGINE_HOSTS=engine-0, 10.0.0.7,::1",
            "CKPT_ENGINE_ALLOW_ENGINE_SOCKETS=/run/vllm/a.sock:/run/vllm/b.sock"));
        Assert.Equal(3L << 29, c.RegistrationBudget);
        Assert.Equal(["/data/models", "/dev/shm/ckpt"], c.AllowDirs);
        Assert.Equal(["engine-0", "10.0.0.7", "::1"], c.AllowEngineHosts);
        Assert.Equal(["/run/vllm/a.sock", "/run/vllm/b.sock"], c.AllowEngineSockets);
    }

    [Fact]
    public void FromEnvironment_RegistrationSettingsUnset_NoBudgetAndEmptyLists()
    {
        var c = RankConfig.FromEnvironment(new Hashtable());
        Assert.Null(c.RegistrationBudget);
        Assert.Empty(c.AllowDirs);
        Assert.Empty(c.AllowEngineHosts);
        Assert.Empty(c.AllowEngineSockets);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("64GiB")]
    public void FromEnvironment_BadRegistrationBudget_Throws(string value)
    {
        var e = Assert.Throws<CheckpointEngineException>(() => RankConfig.FromEnvironment(Env($"CKPT_ENGINE_REGISTRATION_BUDGET_GB={value}")));
        Assert.Contains($"CKPT_ENGINE_REGISTRATION_BUDGET_GB={value} is not a positive number of GiB", e.Message, StringComparison.Ordinal);
    }
}
