using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Simulation;

/// <summary>
/// Everything about a simulated update that does not depend on costs: each rank's registered share packed
/// by the real <see cref="BufferLayout"/>, bucket sizing, and the buckets in the order the schedule runs
/// them, cut and ordered by the real planner (<see cref="BucketPlanner"/>, <see cref="ReceiverAssignment"/>); shard-aware,
/// each bucket's route as the real <see cref="ClassRelay"/> decides it.
/// </summary>
public sealed class SimulationPlan
{
    private SimulationPlan(Scenario scenario, GlobalMetas metas, long bucketSize, int slots, IReadOnlyList<PlannedBucket> buckets, IReadOnlyList<BucketRoute>? routes)
    {
        Scenario = scenario;
        Metas = metas;
        BucketSize = bucketSize;
        Slots = slots;
        Buckets = buckets;
        Routes = routes;
        Steps = buckets.Count == 0 ? 0 : buckets.Max(b => b.Step) + 1;
    }

    public Scenario Scenario { get; }

    public GlobalMetas Metas { get; }

    public long BucketSize { get; }

    /// <summary>Device buffers of one bucket each: 3 (staging ∥ broadcast ∥ reload) or 2 when memory is short.</summary>
    public int Slots { get; }

    public IReadOnlyList<PlannedBucket> Buckets { get; }

    public int Steps { get; }

    /// <summary>Per bucket, how the shard-aware loop moves it; null where buckets are broadcast whole.</summary>
    public IReadOnlyList<BucketRoute>? Routes { get; }

    /// <summary>Buffers for a bucket on its way to every rank (one in flight, one being reloaded), or one when memory is short.</summary>
    public int BroadcastSlots => Slots >= 3 ? 2 : 1;

    /// <summary>Buckets whose transfers may run at once (see <see cref="Scenario.Window"/>).</summary>
    public int Window => Scenario.Window;

    /// <summary>
    /// Device memory per GPU that a window beyond one bucket adds to the buffers sized for the loop: for the pipelined what-if a
    /// buffer per bucket in flight beyond the first for the most that GPU holds of one (its part and those it proxies, or the
    /// bucket); none for several in flight, which is sized as built: the same memory in more buffers of smaller buckets.
    /// </summary>
    public long ExtraMemory => Scenario.Design == SimulatedDesign.ShardAware ? 0 : (Window - 1) * (Routes?.Max(r => r.HeldPart) ?? BucketSize);

    public int GroupRanks => Scenario.GroupRanks;

    public int GroupNodes => Scenario.Cluster.Nodes(GroupRanks);

    public static SimulationPlan Build(Scenario s)
    {
        var problems = s.Problems().ToList();
        if (problems.Count > 0)
        {
            throw new CheckpointEngineException(string.Join("; ", problems));
        }
        var metas = RegisterShares(s);
        var original = s.Design == SimulatedDesign.Original;
        var (size, slots) = original
            ? OriginalSizing(s.Free, metas.LargestTensor, s.MaxBucketSize)
            : BucketSizing.Plan(s.Free, metas.LargestTensor, metas.Ranks.Max(r => r.TotalBytes), maxBucketSize: s.MaxBucketSize,
                inFlight: s.Design == SimulatedDesign.ShardAware ? s.Window : 1) is var b ? (b.BucketSize, b.Slots) : default;
        var perOwner = metas.Ranks.Select(r => BucketPlanner.Cut(r, size)).ToList();

        List<(H2DBucket Bucket, int Stager, int Step)> order;
        if (s.Method == SimulatedMethod.Broadcast)
        {
            // The original's loop (step i: bucket i of each owner in rank order) is the order Interleave gives.
            order = BucketPlanner.Interleave(perOwner).Select(x => (x, x.Owner, x.Index)).ToList();
        }
        else
        {
            string Device(int rank) => metas.Ranks[rank].NetDevice!;
            var receivers = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, s.GroupRanks), Device);
            var assigned = ReceiverAssignment.Assign(perOwner.SelectMany(l => l).Select(x => (x.Owner, x)).ToList(), Device, receivers);
            var seen = new Dictionary<int, int>();
            order = assigned.Select(a =>
            {
                var step = seen.GetValueOrDefault(a.Receiver);
                seen[a.Receiver] = step + 1;
                return (a.Bucket, a.Receiver, step);
            }).ToList();
            if (original)
            {
                // The original's P2P loop: step i, then each receiver (in order of first appearance) with an i-th bucket.
                var first = order.Select(o => o.Stager).Distinct().Select((r, i) => (r, i)).ToDictionary(x => x.r, x => x.i);
                order = [.. order.OrderBy(o => o.Step).ThenBy(o => first[o.Stager])];
            }
        }

        if (s.Design == SimulatedDesign.ShardAware && s.Window > 1)
        {
            // Stagers node by node in turn (within each step), so that consecutive buckets leave through different nodes.
            var perNode = s.Cluster.GpusPerNode;
            order = [.. order.OrderBy(o => o.Step).ThenBy(o => o.Stager % perNode).ThenBy(o => o.Stager / perNode)];
        }
        var tp = s.TensorParallel;
        var buckets = order.Select((o, k) =>
        {
            long shard = 0;
            foreach (var m in o.Bucket.Items)
            {
                shard += TensorSpec.IsSplit(m.Name, m.Shape.Length) ? (m.ByteLength + tp - 1) / tp : m.ByteLength;
            }
            return new PlannedBucket(k, o.Bucket.Owner, o.Stager, o.Step, o.Bucket.Size, shard, o.Bucket.Items.Count);
        }).ToList();
        return new SimulationPlan(s, metas, size, slots, buckets, s.Routed ? BucketRoute.Plan(s, buckets) : null);
    }

    /// <summary>
    /// The original's sizing: 90% of free memory; with a separate staging buffer (three buffers' worth) when the
    /// largest tensor fits a third, else two; the bucket is the 8 GiB cap (never below the largest tensor) or the share.
    /// </summary>
    public static (long BucketSize, int Slots) OriginalSizing(long free, long largest, long maxBucket)
    {
        var usable = (long)(free * BucketSizing.DefaultFraction);
        var third = usable / (3 * 256) * 256;
        var (share, slots) = largest <= third ? (third, 3) : (usable / (2 * 256) * 256, 2);
        if (largest > share)
        {
            throw new CheckpointEngineException($"not enough device memory: the largest tensor ({largest} bytes) does not fit {slots} buffers in {usable} usable bytes");
        }
        return (Math.Min(Math.Max(maxBucket, largest), share), slots);
    }

    /// <summary>
    /// What each rank registers, packed into host buffers by the real layout. The original's example splits tensors
    /// into equal counts in index (name) order; ours balances bytes (<see cref="CheckpointSplit"/>).
    /// </summary>
    private static GlobalMetas RegisterShares(Scenario s)
    {
        var tensors = s.Model.Tensors;
        var p = s.Gpus;
        List<int>[] shares;
        if (s.Design == SimulatedDesign.Original)
        {
            var per = (tensors.Count + p - 1) / p;
            shares = [.. Enumerable.Range(0, p).Select(r => Enumerable.Range(r * per, Math.Max(0, Math.Min(per, tensors.Count - r * per))).ToList())];
        }
        else
        {
            shares = CheckpointSplit.Balance(tensors.Select((t, i) => (i, t.ByteLength)), p, Comparer<int>.Default);
        }
        var ranks = new RankMetas[p];
        for (var r = 0; r < p; r++)
        {
            var packed = BufferLayout.Pack(shares[r].Select(i => (tensors[i].Name, tensors[i].DType, tensors[i].Shape, tensors[i].ByteLength)));
            var node = s.Cluster.NodeOf(r);
            ranks[r] = new RankMetas(r, $"GPU-sim-{r}", $"node{node}:{r}",
                [.. packed.Select(b => new BufferMeta(b.Size, 0, b.Metas))], $"node{node}/nic{s.Cluster.NicOf(r)}");
        }
        return new GlobalMetas(s.Model.Name, ranks);
    }
}
