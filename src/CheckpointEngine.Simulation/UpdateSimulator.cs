namespace CheckpointEngine.Simulation;

/// <summary>
/// Runs a planned update on the cost model, event by event: each stage of each bucket starts when its
/// inputs are ready and its resource is free (the stager's copy engine, the group's collective stream,
/// the worker), in the order the schedule issues them. Durations are deterministic, so this is exact
/// for the schedule; every time carries the breakdown of the path that led to it (<see cref="PathCost"/>).
/// Linear in the number of buckets: 2048 GPUs take well under a second once planned.
/// </summary>
public static class UpdateSimulator
{
    public static SimulationResult Run(SimulationPlan plan, CostParameters parameters) =>
        Run(plan, new CostModel(plan.Scenario.Cluster, parameters));

    public static SimulationResult Run(SimulationPlan plan, CostModel costs) =>
        plan.Scenario.Design == SimulatedDesign.Original ? RunOriginal(plan, costs) : RunOurs(plan, costs);

    private static Cost Stage(SimulationPlan plan, CostModel costs, PlannedBucket b) =>
        plan.Scenario.Method == SimulatedMethod.P2P ? costs.RdmaRead(b.Bytes) : costs.HostToDevice(b.Bytes);

    /// <summary>
    /// A bucket's broadcast: every GPU receives the whole bucket, also shard-aware (as built for GPUs: NCCL broadcasts the bucket and
    /// each GPU cuts its part on the device, then reloads only that). Class relays between nodes (ClassRelay, used on the host
    /// backend) would halve a node's network ingress when an instance spans two nodes, but the stager's node must first spread the
    /// whole bucket over NVLink, one bucket at a time: <see cref="RelayedBroadcast"/> prices that (design shard-aware-relay, a what-if).
    /// </summary>
    private static Cost Broadcast(SimulationPlan plan, CostModel costs, PlannedBucket b) =>
        plan.Scenario.Design == SimulatedDesign.ShardAwareRelay && plan.GroupNodes > 1
            ? RelayedBroadcast(plan, costs, b)
            : costs.Broadcast(b.Bytes, b.Bytes, plan.GroupRanks, plan.GroupNodes);

    /// <summary>
    /// The class relay on GPUs, were it used: the stager's node broadcasts the bucket over NVLink and each GPU cuts its part (and a
    /// proxy's), then each class relays its part to one member per instance elsewhere over its own group: a GPU's network ingress is
    /// its shard and a node's the shards of its classes, but the NVLink step and the relay follow each other per bucket.
    /// </summary>
    private static Cost RelayedBroadcast(SimulationPlan plan, CostModel costs, PlannedBucket b)
    {
        var scenario = plan.Scenario;
        var classesPerNode = Math.Min(scenario.Cluster.GpusPerNode, scenario.TensorParallel);
        var local = costs.Broadcast(b.Bytes, b.Bytes, Math.Min(plan.GroupRanks, scenario.Cluster.GpusPerNode), 1);
        var members = Math.Max(2, plan.GroupRanks / scenario.TensorParallel);
        var relay = costs.Broadcast(b.ShardBytes, b.ShardBytes * classesPerNode, members, Math.Min(members, plan.GroupNodes));
        return new Cost(CostCategory.Link, local.Work + relay.Work, local.Latency + relay.Latency);
    }

    private static Cost Reload(SimulationPlan plan, CostModel costs, PlannedBucket b) =>
        costs.Reload(plan.Scenario.Design is SimulatedDesign.ShardAware or SimulatedDesign.ShardAwareRelay ? b.ShardBytes : b.Bytes);

    /// <summary>
    /// Our ParameterServer's bucket loop (PumpAsync), bucket by bucket: every stager copies its own buckets into
    /// its staging buffers ahead of their turn (one copy at a time per stager, all stagers at once), as soon as the
    /// reload of the bucket a staging buffer held before is agreed on; bucket k is broadcast once staged, and its
    /// reload runs while bucket k+1 is broadcast.
    /// </summary>
    private static SimulationResult RunOurs(SimulationPlan plan, CostModel costs)
    {
        var buckets = plan.Buckets;
        var n = buckets.Count;
        var agree = costs.Agreement(plan.GroupRanks);
        var p2p = plan.Scenario.Method == SimulatedMethod.P2P;
        var broadcastSlots = plan.Slots >= 3 ? 2 : 1;
        var stagingSlots = plan.Slots - broadcastSlots;
        var timeline = new SimulatedBucket[n];
        var engineFree = new Dictionary<int, PathCost>();
        var staging = new Dictionary<int, double>();
        var owned = new Dictionary<int, List<int>>(); // Each stager's buckets, in schedule order.
        var ordinal = new int[n];
        for (var k = 0; k < n; k++)
        {
            var list = owned.TryGetValue(buckets[k].Stager, out var l) ? l : owned[buckets[k].Stager] = [];
            ordinal[k] = list.Count;
            list.Add(k);
        }
        var freed = new PathCost[n]; // When the reload of bucket k was agreed on: its staging buffer is free again.

        // Setup: the all-reduce that sizes buckets, the all-gather of worker addresses, attaching the worker and agreeing on it.
        var loop = PathCost.Zero.Add(agree).Add(agree).Add(costs.Reload(0)).Add(agree);
        var setup = loop;
        PathCost reloadEnd = default;
        var reloadPending = false;
        double broadcastBusy = 0, reloadBusy = 0;

        void AgreeOnReload(int k)
        {
            loop = PathCost.Max(loop, reloadEnd).Add(agree);
            freed[k] = loop;
            reloadPending = false;
        }

        for (var k = 0; k < n; k++)
        {
            var b = buckets[k];
            if (reloadPending && (broadcastSlots == 1 || stagingSlots == 1 && buckets[k - 1].Stager == b.Stager))
            {
                AgreeOnReload(k - 1); // Its buffer is the one needed now.
            }
            // The stager copied this bucket as soon as its engine and its staging buffer were free.
            var j = ordinal[k];
            var from = PathCost.Max(setup, engineFree.GetValueOrDefault(b.Stager));
            if (j >= stagingSlots)
            {
                from = PathCost.Max(from, freed[owned[b.Stager][j - stagingSlots]]);
            }
            var cost = Stage(plan, costs, b);
            var stageEnd = engineFree[b.Stager] = from.Add(cost);
            staging[b.Stager] = staging.GetValueOrDefault(b.Stager) + cost.Seconds;

            var t = PathCost.Max(loop, stageEnd);
            if (p2p)
            {
                t = t.Add(agree); // A read can fail: the ranks agree before anyone waits on its broadcast.
            }
            var broadcastStart = t;
            var broadcast = Broadcast(plan, costs, b);
            broadcastBusy += broadcast.Seconds;
            loop = broadcastStart.Add(broadcast);
            var broadcastEnd = loop;
            if (reloadPending)
            {
                AgreeOnReload(k - 1);
            }
            var reload = Reload(plan, costs, b);
            reloadBusy += reload.Seconds;
            var reloadStart = loop;
            reloadEnd = loop.Add(reload);
            reloadPending = true;
            timeline[k] = new SimulatedBucket(b, from.Time, stageEnd.Time, broadcastStart.Time, broadcastEnd.Time, reloadStart.Time, reloadEnd.Time);
        }
        if (reloadPending)
        {
            AgreeOnReload(n - 1);
        }
        // Releasing the buffer and the post-load hook, each agreed on.
        var end = loop.Add(costs.Reload(0)).Add(agree).Add(costs.Finish()).Add(agree);
        return new SimulationResult(plan, costs, end, staging.Values.DefaultIfEmpty(0).Max(), broadcastBusy, reloadBusy, timeline);
    }

    /// <summary>The original's loop: per step, every stager fills its staging buffer at once; then stager by stager a device copy, the broadcast, the previous reload's reply, an all-reduce.</summary>
    private static SimulationResult RunOriginal(SimulationPlan plan, CostModel costs)
    {
        var buckets = plan.Buckets;
        var n = buckets.Count;
        var ranks = plan.GroupRanks;
        var agree = costs.Agreement(ranks);
        var timeline = new SimulatedBucket[n];
        var staging = new Dictionary<int, double>();
        double broadcastBusy = 0, reloadBusy = 0;

        // Setup: the all-reduce that sizes buckets, sending the buffer handle to the worker.
        var loop = PathCost.Zero.Add(agree).Add(costs.Reload(0));
        PathCost reloadEnd = default;
        for (var k = 0; k < n;)
        {
            var step = buckets[k].Step;
            var last = k;
            while (last + 1 < n && buckets[last + 1].Step == step)
            {
                last++;
            }
            var stepStart = loop;
            var stageEnds = new Dictionary<int, PathCost>();
            if (plan.Slots >= 3)
            {
                // Every stager copies its bucket of this step into its staging buffer, synchronously, before any broadcast.
                var ready = loop;
                for (var j = k; j <= last; j++)
                {
                    var cost = Stage(plan, costs, buckets[j]);
                    staging[buckets[j].Stager] = staging.GetValueOrDefault(buckets[j].Stager) + cost.Seconds;
                    stageEnds[j] = stepStart.Add(cost);
                    ready = PathCost.Max(ready, stageEnds[j]);
                }
                loop = ready;
            }
            for (var j = k; j <= last; j++)
            {
                var b = buckets[j];
                PathCost stageFrom = stepStart, stageTo;
                if (plan.Slots >= 3)
                {
                    stageTo = stageEnds[j];
                    loop = loop.Add(costs.DeviceCopy(b.Bytes));
                }
                else
                {
                    var cost = Stage(plan, costs, b); // No staging buffer: the stager copies straight into the broadcast buffer.
                    staging[b.Stager] = staging.GetValueOrDefault(b.Stager) + cost.Seconds;
                    stageFrom = loop;
                    stageTo = loop = loop.Add(cost);
                }
                var broadcastStart = loop;
                var broadcast = Broadcast(plan, costs, b);
                broadcastBusy += broadcast.Seconds;
                var broadcastEnd = broadcastStart.Add(broadcast);
                var t = j > 0 ? PathCost.Max(broadcastEnd, reloadEnd) : broadcastEnd;
                t = t.Add(agree);
                var reload = Reload(plan, costs, b);
                reloadBusy += reload.Seconds;
                reloadEnd = t.Add(reload);
                timeline[j] = new SimulatedBucket(b, stageFrom.Time, stageTo.Time, broadcastStart.Time, broadcastEnd.Time, t.Time, reloadEnd.Time);
                loop = t;
            }
            k = last + 1;
        }
        // The last reply, the end message, the final barrier.
        var end = (n > 0 ? PathCost.Max(loop, reloadEnd) : loop).Add(costs.Finish()).Add(agree);
        return new SimulationResult(plan, costs, end, staging.Values.DefaultIfEmpty(0).Max(), broadcastBusy, reloadBusy, timeline);
    }
}
