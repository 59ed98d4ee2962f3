using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Tests.Simulation;

public sealed class UpdateSimulatorTests
{
    private static readonly ModelInventory Small = InventoryBuilder.Build("small", PresetSample.Fit(ModelPresets.DeepSeekV31, 512L << 20, layers: 6, experts: 16));
    private static readonly CostParameters Costs = new(0.7, 1e-4, 80e9, 0.8, 0.2);
    private static readonly long Free = (long)(Small.LargestTensor * 3.6 / 0.9);

    private static SimulationResult Run(SimulatedDesign design, SimulatedMethod method = SimulatedMethod.Broadcast, int gpus = 16, long? free = null, CostParameters? costs = null,
        int tp = 8, int? inFlight = null, bool? relays = null) =>
        UpdateSimulator.Run(SimulationPlan.Build(new Scenario(Small, ClusterPresets.H20, gpus, tp, method, design, free ?? Free, InFlight: inFlight, ClassRelays: relays)), costs ?? Costs);

    [Theory]
    [InlineData(SimulatedDesign.Original, SimulatedMethod.Broadcast, 8, null)]
    [InlineData(SimulatedDesign.Ours, SimulatedMethod.Broadcast, 8, null)]
    [InlineData(SimulatedDesign.Ours, SimulatedMethod.P2P, 8, null)]
    [InlineData(SimulatedDesign.ShardAwareBroadcast, SimulatedMethod.Broadcast, 8, null)]
    [InlineData(SimulatedDesign.ShardAware, SimulatedMethod.Broadcast, 8, null)]
    [InlineData(SimulatedDesign.ShardAware, SimulatedMethod.Broadcast, 16, 1)]
    [InlineData(SimulatedDesign.ShardAware, SimulatedMethod.Broadcast, 16, null)]
    [InlineData(SimulatedDesign.ShardAware, SimulatedMethod.P2P, 16, null)]
    [InlineData(SimulatedDesign.ShardAwarePipelined, SimulatedMethod.Broadcast, 16, null)]
    public void Stages_RespectTheirDependencies(SimulatedDesign design, SimulatedMethod method, int tp, int? inFlight)
    {
        var r = Run(design, method, gpus: 32, tp: tp, inFlight: inFlight);
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

    /// <summary>Instances of 16 GPUs over nodes of 8, two of them: every bucket is scattered on its stager's node, then relayed.</summary>
    private static SimulationResult Relayed(SimulatedDesign design, int? inFlight = null, CostParameters? costs = null) =>
        Run(design, gpus: 32, tp: 16, inFlight: inFlight, costs: costs, relays: design == SimulatedDesign.ShardAware ? true : null);

    [Fact]
    public void ShardAware_OneBucketAtATime_EachMovesByItsScatterThenItsRelays()
    {
        var r = Relayed(SimulatedDesign.ShardAware, inFlight: 1);
        var previous = 0.0;
        foreach (var (b, route) in r.Buckets.Zip(r.Plan.Routes!))
        {
            Assert.Equal(RouteKind.ScatterAndRelay, route.Kind);
            var scatter = r.Costs.Scatter(route.ScatterEgress, route.ScatterIngress);
            var relay = r.Costs.Relay(b.Bucket.ShardBytes, Math.Max(route.RelayEgress, route.MaxIngress), route.HeadEgress, route.Ring);
            Assert.Equal(scatter.Seconds + relay.Seconds, b.BroadcastEnd - b.BroadcastStart, 9);
            Assert.True(b.BroadcastStart >= previous - 1e-12, $"bucket {b.Bucket.Index} moved before bucket {b.Bucket.Index - 1} arrived");
            previous = b.BroadcastEnd;
        }
        Assert.Equal(r.Costs.Reload(0).Latency * r.Buckets.Count + r.Buckets.Sum(b => b.Bucket.ShardBytes) / Costs.ReloadBandwidth, r.ReloadBusy, 9);
    }

    [Fact]
    public void ShardAware_OneNode_TheScatterMovesLessThanABroadcast()
    {
        var scatter = Run(SimulatedDesign.ShardAware, gpus: 8);
        var broadcast = Run(SimulatedDesign.ShardAwareBroadcast, gpus: 8);
        Assert.All(scatter.Plan.Routes!, r => Assert.Equal(RouteKind.Scatter, r.Kind));
        Assert.True(scatter.BroadcastBusy < broadcast.BroadcastBusy, $"scatters {scatter.BroadcastBusy} s against broadcasts {broadcast.BroadcastBusy} s");
        Assert.Equal(broadcast.ReloadBusy, scatter.ReloadBusy, 9);
    }

    /// <summary>The most moves under way at once.</summary>
    private static int InFlight(SimulationResult r) =>
        r.Buckets.Max(b => r.Buckets.Count(o => o.BroadcastStart <= b.BroadcastStart + 1e-12 && o.BroadcastEnd > b.BroadcastStart + 1e-12));

    [Fact]
    public void Pipelined_TheNextScatterOverlapsTheseRelays_TwoMovesAtMost()
    {
        var built = Relayed(SimulatedDesign.ShardAware, inFlight: 1);
        var pipelined = Relayed(SimulatedDesign.ShardAwarePipelined);
        Assert.Equal(1, InFlight(built));
        Assert.Equal(2, InFlight(pipelined));
        Assert.True(pipelined.Seconds < built.Seconds, $"pipelined {pipelined.Seconds} s against {built.Seconds} s");
        Assert.Equal(built.BroadcastBusy, pipelined.BroadcastBusy, 9); // The same calls, overlapped.
    }

    [Fact]
    public void Concurrent_KeepsItsWindow_AndNeverBeatsTheBusiestNodesNetworkIngress()
    {
        var bytesOnly = Costs with { CallLatency = 1e-9, ReloadBandwidth = 1e13 };
        var concurrent = Relayed(SimulatedDesign.ShardAware, costs: bytesOnly); // Three in flight, across two nodes by default.
        var pipelined = Relayed(SimulatedDesign.ShardAwarePipelined, costs: bytesOnly);
        Assert.Equal(3, InFlight(concurrent));
        Assert.True(concurrent.Seconds < pipelined.Seconds, $"concurrent {concurrent.Seconds} s against {pipelined.Seconds} s");
        // However many move at once, each node's NICs take in the parts of its classes, bucket after bucket.
        var ingress = concurrent.Plan.Routes!.SelectMany(r => r.Ingress).GroupBy(x => x.Node).Max(g => g.Sum(x => x.Bytes));
        var moving = concurrent.Buckets[^1].BroadcastEnd - concurrent.Buckets.Min(b => b.BroadcastStart);
        Assert.True(moving >= concurrent.Costs.NetworkSeconds(ingress) - 1e-9, $"moved in {moving} s, under the {concurrent.Costs.NetworkSeconds(ingress)} s a node needs to take in its parts");
    }
}
