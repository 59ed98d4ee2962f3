using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Clusters;

namespace CheckpointEngine.Tests.Simulation;

public sealed class CostModelTests
{
    private static readonly ClusterSpec Cluster = ClusterPresets.H20 with { HostToDevice = 50e9, NvLink = 400e9, NicsPerNode = 8, NicBandwidth = 50e9 };
    private static readonly CostParameters Parameters = new(LinkEfficiency: 0.5, CallLatency: 1e-3, ReloadBandwidth: 100e9, RdmaEfficiency: 0.8, FinishOverhead: 0.5);
    private static readonly CostModel Costs = new(Cluster, Parameters);

    [Fact]
    public void HostToDevice_IsBytesOverPcieBandwidth() => Assert.Equal(0.1, Costs.HostToDevice(5_000_000_000).Seconds, 9);

    [Fact]
    public void Broadcast_WithinOneNode_IsBoundByNvLinkAtTheFittedEfficiencyPlusLatency()
    {
        var c = Costs.Broadcast(2_000_000_000, 2_000_000_000, ranks: 8, nodes: 1);
        Assert.Equal(2e9 / (0.5 * 400e9), c.Work, 9);
        Assert.Equal(1e-3 + 7 * CostModel.HopLatency, c.Latency, 12);
        Assert.Equal(CostCategory.NvLink, c.Category);
    }

    [Fact]
    public void Broadcast_AcrossNodes_IsBoundByTheSlowerOfNvLinkAndTheNodesNics()
    {
        var slowNics = new CostModel(Cluster with { NicsPerNode = 2, NicBandwidth = 25e9 }, Parameters);
        var c = slowNics.Broadcast(1_000_000_000, 1_000_000_000, ranks: 16, nodes: 2);
        Assert.Equal(1e9 / (0.5 * 50e9), c.Work, 9);
        Assert.Equal(1e9 / (0.5 * 400e9), Costs.Broadcast(1_000_000_000, 1_000_000_000, 16, 2).Work, 9); // 8×50 GB/s of NICs ≥ NVLink.
    }

    [Fact]
    public void Broadcast_RingLatencyGrowsWithRanks()
    {
        var small = Costs.Broadcast(1 << 20, 1 << 20, 16, 2);
        var large = Costs.Broadcast(1 << 20, 1 << 20, 2048, 256);
        Assert.Equal(2032 * CostModel.HopLatency, large.Latency - small.Latency, 9);
        Assert.Equal(0, Costs.Broadcast(1 << 30, 1 << 30, 1, 1).Seconds);
    }

    [Fact]
    public void Agreement_TakesLog2RanksLatencySteps()
    {
        Assert.Equal(0, Costs.Agreement(1).Seconds);
        Assert.Equal(4e-3, Costs.Agreement(16).Seconds, 12);
        Assert.Equal(8e-3, Costs.Agreement(256).Seconds, 12);
        Assert.Equal(4e-3, Costs.Agreement(9).Seconds, 12);
    }

    [Fact]
    public void Reload_ChargesBytesToReloadAndTheReplyToLatency()
    {
        var c = Costs.Reload(1_000_000_000);
        Assert.Equal((CostCategory.Reload, 0.01, 1e-3), (c.Category, Math.Round(c.Work, 9), c.Latency));
    }

    [Fact]
    public void RdmaRead_IsBoundByTheNicAtItsEfficiencyOrByPcie()
    {
        Assert.Equal(4e9 / (0.8 * 50e9) + 1e-3, Costs.RdmaRead(4_000_000_000).Seconds, 9);
        var fastNic = new CostModel(Cluster with { NicBandwidth = 200e9 }, Parameters);
        Assert.Equal(4e9 / 50e9 + 1e-3, fastNic.RdmaRead(4_000_000_000).Seconds, 9);
    }

    [Fact]
    public void PathCost_KeepsTheBreakdownOfTheLaterPath()
    {
        var a = PathCost.Zero.Add(new Cost(CostCategory.Staging, 2));
        var b = PathCost.Zero.Add(new Cost(CostCategory.Network, 1, 0.5)).Add(new Cost(CostCategory.Reload, 1));
        var later = PathCost.Max(a, b);
        Assert.Equal((2.5, 0.0, 1.0, 1.0, 0.5), (later.Time, later.Staging, later.Network, later.Reload, later.Latency));
    }

    [Fact]
    public void Presets_HaveNoProblems() => Assert.All(ClusterPresets.All, c => Assert.Empty(c.Problems()));

    [Fact]
    public void Cluster_NicsAreSharedByConsecutiveGpus()
    {
        var c = ClusterPresets.H20 with { NicsPerNode = 4 };
        Assert.Equal([0, 0, 1, 1, 2, 2, 3, 3, 0], Enumerable.Range(0, 9).Select(c.NicOf));
        Assert.NotEmpty((c with { NicsPerNode = 3 }).Problems());
    }
}
