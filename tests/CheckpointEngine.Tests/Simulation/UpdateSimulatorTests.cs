using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Tests.Simulation;

public sealed class UpdateSimulatorTests
{
    private static readonly ModelInventory Small = InventoryBuilder.Build("small", PresetSample.Fit(ModelPresets.DeepSeekV31, 512L << 20, layers: 6, experts: 16));
    private static readonly CostParameters Costs = new(0.7, 1e-4, 80e9, 0.8, 0.2);
    private static readonly long Free = (long)(Small.LargestTensor * 3.6 / 0.9);

    private static SimulationResult Run(SimulatedDesign design, SimulatedMethod method = SimulatedMethod.Broadcast, int gpus = 16, long? free = null, CostParameters? costs = null) =>
        UpdateSimulator.Run(SimulationPlan.Build(new Scenario(Small, ClusterPresets.H20, gpus, 8, method, design, free ?? Free)), costs ?? Costs);

    [Theory]
    [InlineData(SimulatedDesign.Original, SimulatedMethod.Broadcast)]
    [InlineData(SimulatedDesign.Ours, SimulatedMethod.Broadcast)]
    [InlineData(SimulatedDesign.Ours, SimulatedMethod.P2P)]
    [InlineData(SimulatedDesign.ShardAware, SimulatedMethod.Broadcast)]
    public void Stages_RespectTheirDependencies(SimulatedDesign design, SimulatedMethod method)
    {
        var r = Run(design, method);
        var previousReload = 0.0;
        foreach (var b in r.Buckets)
        {
            Assert.True(b.StageEnd >= b.StageStart && b.BroadcastStart >= b.StageEnd - 1e-12, $"bucket {b.Bucket.Index}: broadcast before it is staged");
            Assert.True(b.ReloadStart >= b.BroadcastEnd && b.ReloadStart >= previousReload, $"bucket {b.Bucket.Index}: reload too early");
            previousReload = b.ReloadEnd;
        }
        Assert.True(r.Seconds >= r.Buckets[^1].ReloadEnd);
        Assert.Equal(r.Seconds, r.CriticalPath.Staging + r.CriticalPath.NvLink + r.CriticalPath.Network + r.CriticalPath.Reload + r.CriticalPath.Latency, 9);
    }

    [Fact]
    public void Ours_OverlapsStagingWithBroadcastAndReload_TheOriginalDoesNot()
    {
        // With staging the slowest stage, ours hides the broadcasts and reloads behind it; the original adds its staging steps to them.
        var slowCopies = Costs with { ReloadBandwidth = 1e12, FinishOverhead = 1e-6 };
        var cluster = ClusterPresets.H20 with { HostToDevice = 5e9 };
        // Room for four buffers: two broadcast buffers and two staging buffers, so a lone stager copies a bucket while the previous one is reloaded.
        var roomy = (long)(Small.LargestTensor * 4.5 / 0.9);
        SimulationResult Sim(SimulatedDesign d) => UpdateSimulator.Run(SimulationPlan.Build(new Scenario(Small, cluster, 1, 1, SimulatedMethod.Broadcast, d, roomy)), slowCopies);
        var ours = Sim(SimulatedDesign.Ours);
        Assert.Equal(4, ours.Plan.Slots);
        Assert.Equal(CostCategory.Staging, ours.Bound);
        Assert.True(ours.Seconds < ours.StagingBusy + 0.05 + ours.Plan.Buckets.Count * 1e-3);
        var original = Sim(SimulatedDesign.Original);
        Assert.True(original.Seconds > ours.Seconds);
    }

    [Fact]
    public void ShardAwareBroadcast_EveryGpuStillReceivesTheBucket_ButReloadsOnlyItsSlice()
    {
        var ours = Run(SimulatedDesign.Ours);
        var shardAware = Run(SimulatedDesign.ShardAwareBroadcast);
        Assert.Equal(ours.BroadcastBusy, shardAware.BroadcastBusy, 9);
        Assert.True(shardAware.ReloadBusy < ours.ReloadBusy / 2, $"reload busy {shardAware.ReloadBusy} s against {ours.ReloadBusy} s");
        Assert.True(shardAware.Seconds < ours.Seconds);
    }

    [Fact]
    public void Ours_CopiesOnEveryOwnerAtOnce()
    {
        var ours = Run(SimulatedDesign.Ours);
        var concurrent = ours.Buckets.Count(b => b.StageStart < ours.Buckets[0].StageEnd);
        Assert.True(concurrent > 1, "owners should stage their first buckets together");
    }

    [Fact]
    public void Ours_TwoBuffers_NeverStagesIntoABufferStillInUse()
    {
        // Room for two buffers only: one broadcast and one staging buffer, so a stager's next copy waits for its previous reload.
        var tight = (long)(Small.LargestTensor * 2.2 / 0.9);
        var r = Run(SimulatedDesign.Ours, free: tight);
        Assert.Equal(2, r.Plan.Slots);
        var last = new Dictionary<int, SimulatedBucket>();
        foreach (var b in r.Buckets)
        {
            if (last.TryGetValue(b.Bucket.Stager, out var before))
            {
                Assert.True(b.StageStart >= before.ReloadEnd - 1e-12, $"bucket {b.Bucket.Index} staged over bucket {before.Bucket.Index} before its reload ended");
            }
            last[b.Bucket.Stager] = b;
        }
    }

    [Fact]
    public void ShardAwareBroadcast_ReloadsLess()
    {
        var bytesOnly = Costs with { CallLatency = 1e-9 };
        var ours = Run(SimulatedDesign.Ours, costs: bytesOnly);
        var shard = Run(SimulatedDesign.ShardAwareBroadcast, costs: bytesOnly);
        Assert.True(shard.ReloadBusy < ours.ReloadBusy / 4);
        Assert.Equal(ours.BroadcastBusy, shard.BroadcastBusy, 9); // The root still sends every byte.
    }
}
