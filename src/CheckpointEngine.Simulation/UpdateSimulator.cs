namespace CheckpointEngine.Simulation;

/// <summary>
/// Runs a planned update on the cost model, event by event: each stage of each bucket starts when its
/// inputs are ready and its resource is free (the stager's copy engine, the communicators that carry it,
/// the links they share, the worker), in the order the schedule issues them. Durations are deterministic, so this is exact
/// for the schedule; every time carries the breakdown of the path that led to it (<see cref="PathCost"/>).
/// Linear in the number of buckets: 2048 GPUs take well under a second once planned.
/// </summary>
public static class UpdateSimulator
{
    public static SimulationResult Run(SimulationPlan plan, CostParameters parameters) =>
        Run(plan, new CostModel(plan.Scenario.Cluster, parameters));

    public static SimulationResult Run(SimulationPlan plan, CostModel costs) =>
        plan.Scenario.Design == SimulatedDesign.Original ? RunOriginal(plan, costs) : RunOurs(plan, costs);

    /// <summary>Filling a bucket's device buffer; a stager that scatters parts also packs them there (a device copy), ahead of its turn like the copy.</summary>
    private static Cost Stage(SimulationPlan plan, CostModel costs, PlannedBucket b)
    {
        var fill = plan.Scenario.Method == SimulatedMethod.P2P ? costs.RdmaRead(b.Bytes) : costs.HostToDevice(b.Bytes);
        return plan.Routes is { } routes && routes[b.Index] is { Kind: not RouteKind.Broadcast } route && (route.ScatterEgress > 0 || route.RelayEgress > 0)
            ? fill with { Work = fill.Work + costs.DeviceCopy(b.Bytes).Work }
            : fill;
    }

    private static Cost Broadcast(SimulationPlan plan, CostModel costs, PlannedBucket b) =>
        costs.Broadcast(b.Bytes, b.Bytes, plan.GroupRanks, plan.GroupNodes);

    private static Cost Reload(SimulationPlan plan, CostModel costs, PlannedBucket b) =>
        costs.Reload(plan.Scenario.ShardAware ? b.ShardBytes : b.Bytes);

    /// <summary>
    /// Our ParameterServer's bucket loop (PumpAsync), bucket by bucket: every stager copies its own buckets into its staging
    /// buffers ahead of their turn (one copy at a time per stager, all stagers at once), as soon as the reload of the bucket a
    /// staging buffer held before is agreed on. Bucket k moves once staged and once a buffer for it is free on every rank
    /// (that of bucket k − buffers, agreed on); as built, one bucket moves at a time and its reload runs while bucket k+1 moves;
    /// the agreement on reload k−1 follows the move of bucket k. With a window of W buckets (what-ifs), up to W move at once and
    /// the agreements lag W behind. Agreements are made in order, early where a buffer is needed sooner.
    /// </summary>
    private static SimulationResult RunOurs(SimulationPlan plan, CostModel costs)
    {
        var buckets = plan.Buckets;
        var n = buckets.Count;
        var agree = costs.Agreement(plan.GroupRanks);
        var p2p = plan.Scenario.Method == SimulatedMethod.P2P;
        var window = plan.Window;
        var partSlots = plan.BroadcastSlots + window - 1;
        var stagingSlots = plan.Slots - plan.BroadcastSlots;
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
        var agreed = new PathCost[n]; // When the reload of bucket k was agreed on: its buffers are free again.
        var moved = new PathCost[n];
        var reloaded = new PathCost[n];
        var done = 0;
        var links = new Links(plan, costs);

        // Setup: the all-reduce that sizes buckets, the all-gather of worker addresses, attaching the worker and agreeing on it.
        var loop = PathCost.Zero.Add(agree).Add(agree).Add(costs.Reload(0)).Add(agree);
        var setup = loop;
        double broadcastBusy = 0, reloadBusy = 0;

        void AgreeUpTo(int k)
        {
            for (; done <= k; done++)
            {
                loop = agreed[done] = PathCost.Max(loop, reloaded[done]).Add(agree);
            }
        }

        for (var k = 0; k < n; k++)
        {
            var b = buckets[k];
            // The stager copies this bucket as soon as its engine and its staging buffer are free.
            var j = ordinal[k];
            var reused = j >= stagingSlots ? owned[b.Stager][j - stagingSlots] : -1;
            AgreeUpTo(Math.Max(reused, k - partSlots)); // The buffers needed now.
            var from = PathCost.Max(setup, engineFree.GetValueOrDefault(b.Stager));
            if (reused >= 0)
            {
                from = PathCost.Max(from, agreed[reused]);
            }
            var cost = Stage(plan, costs, b);
            var stageEnd = engineFree[b.Stager] = from.Add(cost);
            staging[b.Stager] = staging.GetValueOrDefault(b.Stager) + cost.Seconds;

            var start = PathCost.Max(loop, stageEnd);
            if (k >= window)
            {
                start = PathCost.Max(start, moved[k - window]);
            }
            if (p2p)
            {
                start = start.Add(agree); // A read can fail: the ranks agree before anyone waits on its move.
            }
            (moved[k], var busy) = links.Move(b, start);
            broadcastBusy += busy;
            loop = window == 1 ? moved[k] : start;
            AgreeUpTo(k - window);
            var reloadStart = PathCost.Max(moved[k], k > 0 ? reloaded[k - 1] : default);
            if (k >= window)
            {
                reloadStart = PathCost.Max(reloadStart, agreed[k - window]);
            }
            var reload = Reload(plan, costs, b);
            reloadBusy += reload.Seconds;
            reloaded[k] = reloadStart.Add(reload);
            timeline[k] = new SimulatedBucket(b, from.Time, stageEnd.Time, start.Time, moved[k].Time, reloadStart.Time, reloaded[k].Time);
        }
        AgreeUpTo(n - 1);
        // Releasing the buffer and the post-load hook, each agreed on.
        var end = loop.Add(costs.Reload(0)).Add(agree).Add(costs.Finish()).Add(agree);
        return new SimulationResult(plan, costs, end, staging.Values.DefaultIfEmpty(0).Max(), broadcastBusy, reloadBusy, timeline);
    }

    /// <summary>
    /// Moves buckets from their stagers to every rank: a broadcast of the whole bucket, or (shard-aware) a <see cref="BucketRoute"/>:
    /// the scatter on the stager's node, then its class relays. Scatters run one at a time, and so do relays; with several
    /// stagers' buckets in flight (<see cref="SimulatedDesign.ShardAware"/> across nodes) each node's scatters and relays run on
    /// their own communicators. The network is shared as queues of work, one per node and direction, so that moves in flight
    /// at once share the NICs they both use (with one move at a time the queues never wait).
    /// </summary>
    private sealed class Links(SimulationPlan plan, CostModel costs)
    {
        private readonly bool _perNode = plan.Scenario.Design == SimulatedDesign.ShardAware && plan.Window > 1;

        private readonly Dictionary<int, PathCost> _scatters = [];
        private readonly Dictionary<int, PathCost> _relays = [];
        private readonly Dictionary<(int Node, bool Out), double> _network = [];
        private PathCost _broadcasts;

        /// <summary>Bucket <paramref name="b"/> moved, from <paramref name="start"/> on; and the seconds its calls took.</summary>
        public (PathCost End, double Busy) Move(PlannedBucket b, PathCost start)
        {
            var route = plan.Routes?[b.Index];
            if (route is null || route.Kind == RouteKind.Broadcast)
            {
                var cost = Broadcast(plan, costs, b);
                var from = _broadcasts = PathCost.Max(start, _broadcasts);
                var node = plan.Scenario.Cluster.NodeOf(b.Stager);
                var others = plan.GroupNodes == 1 ? [] : Enumerable.Range(0, plan.GroupNodes).Where(h => h != node).Select(h => (h, false, b.Bytes));
                _broadcasts = Queue(from.Add(cost), from.Time, plan.GroupNodes == 1 ? [] : [(node, true, b.Bytes), .. others]);
                return (_broadcasts, cost.Seconds);
            }
            var scatter = costs.Scatter(route.ScatterEgress, route.ScatterIngress);
            var stream = _perNode ? route.Node : 0;
            var scattered = _scatters[stream] = PathCost.Max(start, _scatters.GetValueOrDefault(stream)).Add(scatter);
            if (route.Kind == RouteKind.Scatter)
            {
                return (scattered, scatter.Seconds);
            }
            var relay = costs.Relay(b.ShardBytes, Math.Max(route.RelayEgress, route.MaxIngress), route.HeadEgress, route.Ring);
            var relayFrom = PathCost.Max(scattered, _relays.GetValueOrDefault(stream));
            var relayed = _relays[stream] = Queue(relayFrom.Add(relay), relayFrom.Time,
                [(route.Node, true, route.RelayEgress), .. route.Ingress.Select(x => (x.Node, false, x.Bytes)), .. route.Forward.Select(x => (x.Node, true, x.Bytes))]);
            return (relayed, scatter.Seconds + relay.Seconds);
        }

        /// <summary>Queues each node's share of a move on its NICs from <paramref name="from"/> on; the move ends no sooner than every share is through.</summary>
        private PathCost Queue(PathCost end, double from, IEnumerable<(int Node, bool Out, long Bytes)> shares)
        {
            var last = end.Time;
            foreach (var (node, direction, bytes) in shares)
            {
                var through = _network[(node, direction)] = Math.Max(from, _network.GetValueOrDefault((node, direction))) + costs.NetworkSeconds(bytes);
                last = Math.Max(last, through);
            }
            return last > end.Time ? end.Add(CostCategory.Network, last - end.Time) : end;
        }
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
