using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Tests.Simulation;

/// <summary>The routes of the shard-aware loop: what crosses NVLink and each node's NICs per bucket, as the real ClassRelay decides.</summary>
public sealed class BucketRouteTests
{
    private static readonly ModelInventory Small = InventoryBuilder.Build("small", PresetSample.Fit(ModelPresets.KimiK2, 256L << 20, layers: 6, experts: 16));
    private static readonly long Free = (long)(Small.LargestTensor * 3.6 / 0.9);

    private static SimulationPlan Plan(int gpus, int tp, SimulatedDesign design = SimulatedDesign.ShardAware, SimulatedMethod method = SimulatedMethod.Broadcast, int? inFlight = null,
        bool? relays = null) =>
        SimulationPlan.Build(new Scenario(Small, ClusterPresets.H20, gpus, tp, method, design, Free, InFlight: inFlight, ClassRelays: relays));

    [Fact]
    public void OneNode_NoRelay_EachGpuTakesInItsPart_TheStagerSendsTheOthers()
    {
        var plan = Plan(8, 8);
        Assert.All(plan.Buckets.Zip(plan.Routes!), x =>
        {
            var (b, r) = x;
            Assert.Equal(RouteKind.Scatter, r.Kind);
            Assert.Equal((b.ShardBytes, 7 * b.ShardBytes, b.ShardBytes), (r.ScatterIngress, r.ScatterEgress, r.HeldPart));
            Assert.Equal((0, 0L, 0), (r.Ingress.Count, r.RelayEgress, r.Ring));
        });
    }

    [Fact]
    public void InstancesAcrossNodes_ANodesNetworkIngressIsItsClassesParts_NotTheBucket()
    {
        // 32 GPUs, TP 16 over nodes of 8: instance 0 on nodes 0–1, instance 1 on nodes 2–3. Every node has 8 of the 16 classes.
        var plan = Plan(32, 16);
        Assert.All(plan.Buckets.Zip(plan.Routes!), x =>
        {
            var (b, r) = x;
            Assert.Equal(RouteKind.ScatterAndRelay, r.Kind);
            Assert.Equal(3, r.Ingress.Count); // The three other nodes.
            Assert.All(r.Ingress, i => Assert.Equal(8 * b.ShardBytes, i.Bytes));
            Assert.True(r.MaxIngress < b.Bytes, $"bucket {b.Index}: a node takes in {r.MaxIngress} of {b.Bytes} bytes");
            Assert.Equal(16 * b.ShardBytes, r.RelayEgress); // One part per class leaves the stager's node.
            // The 8 classes with no member on the stager's node have proxies there, one per member: each takes two parts.
            Assert.Equal((2 * b.ShardBytes, 14 * b.ShardBytes, 2 * b.ShardBytes, 2 * b.ShardBytes), (r.ScatterIngress, r.ScatterEgress, r.HeldPart, r.HeadEgress));
            Assert.Equal(3, r.Ring); // A proxy and the class's members in both instances.
            // Members ascend along a ring: the proxied classes' rings pass instance 0's node of those classes (1 for a stager on an even
            // node, which holds classes 0–7; else 0) and end in instance 1's; only that node forwards.
            Assert.Equal((r.Node % 2 == 0 ? 1 : 0, 8 * b.ShardBytes), Assert.Single(r.Forward));
        });
    }

    [Fact]
    public void EveryClassOnEveryNode_RelaysOnlyWhereTheyMoveNoMoreThanTheBucket()
    {
        // TP 8 on nodes of 8: each node holds every class and would take in every part: the bucket where all its tensors are split,
        // more where some are kept whole (once per class). ClassRelay.Pays takes the first and broadcasts the second whole.
        var plan = Plan(16, 8);
        Assert.All(plan.Buckets.Zip(plan.Routes!), x =>
            Assert.Equal(8 * x.First.ShardBytes <= x.First.Bytes ? RouteKind.ScatterAndRelay : RouteKind.Broadcast, x.Second.Kind));
        Assert.All(plan.Buckets.Zip(plan.Routes!).Where(x => x.Second.Kind == RouteKind.Broadcast), x => Assert.Equal(x.First.Bytes, x.Second.HeldPart));
        Assert.Contains(plan.Routes!, r => r.Kind == RouteKind.Broadcast);
        Assert.Contains(plan.Routes!, r => r.Kind == RouteKind.ScatterAndRelay);
    }

    /// <summary>
    /// By P2P the receiving instance spans two nodes: as the parameter server decides on GPUs (one bucket in flight, under 96 nodes), each bucket
    /// is broadcast whole and cut; with relays on, each class relays its part to the other node.
    /// </summary>
    [Fact]
    public void P2P_TheReceivingInstance_BroadcastsByDefault_RelaysBetweenItsTwoNodesWhenOn()
    {
        Assert.All(Plan(32, 16, method: SimulatedMethod.P2P).Routes!, r => Assert.Equal(RouteKind.Broadcast, r.Kind));
        var plan = Plan(32, 16, method: SimulatedMethod.P2P, relays: true);
        Assert.All(plan.Buckets.Zip(plan.Routes!), x =>
        {
            var (b, r) = x;
            Assert.True(b.Stager < 16);
            Assert.Equal(RouteKind.ScatterAndRelay, r.Kind);
            var (node, bytes) = Assert.Single(r.Ingress);
            Assert.Equal((1 - r.Node, 8 * b.ShardBytes, 2), (node, bytes, r.Ring));
        });
    }

    [Fact]
    public void Concurrent_TakesStagersNodeByNode_InTheSameMemory()
    {
        var built = Plan(32, 16, inFlight: 1);
        var concurrent = Plan(32, 16); // Three in flight by default across nodes.
        Assert.Equal((1, 3), (built.Window, concurrent.Window));
        Assert.Equal(built.Buckets.Select(b => (b.Owner, b.Bytes)).Order(), concurrent.Buckets.Select(b => (b.Owner, b.Bytes)).Order());
        var nodes = concurrent.Buckets.Select(b => ClusterPresets.H20.NodeOf(b.Stager)).ToList();
        Assert.True(nodes.Zip(nodes.Skip(1)).Count(p => p.First == p.Second) < nodes.Count / 4, "consecutive buckets should mostly leave through different nodes");
        Assert.Equal(0, built.ExtraMemory);
        Assert.Equal(0, concurrent.ExtraMemory); // As built: the same memory, split into more buffers where it holds them.
        Assert.True(concurrent.Slots >= built.Slots);
        Assert.Equal(concurrent.Routes!.Max(r => r.HeldPart), Plan(32, 16, SimulatedDesign.ShardAwarePipelined).ExtraMemory);
    }

    [Fact]
    public void InFlight_OnlyForShardAware_OneInsideANodeOrByP2P()
    {
        Assert.Throws<CheckpointEngineException>(() => Plan(32, 16, SimulatedDesign.ShardAwareBroadcast, relays: true));
        Assert.Throws<CheckpointEngineException>(() => Plan(32, 16, SimulatedDesign.ShardAwarePipelined, inFlight: 2));
        Assert.Throws<CheckpointEngineException>(() => Plan(32, 16, SimulatedDesign.ShardAware, inFlight: 0));
        Assert.Equal(1, Plan(8, 8).Window);
        Assert.Equal(1, Plan(32, 16, method: SimulatedMethod.P2P).Window);
    }
}
