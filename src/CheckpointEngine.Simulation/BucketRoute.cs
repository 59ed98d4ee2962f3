using CheckpointEngine.Planning;

namespace CheckpointEngine.Simulation;

/// <summary>How the shard-aware loop moves a bucket (see <see cref="BucketRoute"/>).</summary>
public enum RouteKind
{
    /// <summary>The group lies on the stager's node: the scatter alone.</summary>
    Scatter,

    /// <summary>The scatter on the stager's node, then each class relays its part to its members on other nodes.</summary>
    ScatterAndRelay,

    /// <summary>The relay would not pay (<see cref="ClassRelay.Pays"/>): the whole bucket is broadcast to every rank, as GPUs do today.</summary>
    Broadcast,
}

/// <summary>
/// How the shard-aware loop moves one bucket, as the real <see cref="ClassRelay"/> decides it. Classes are the
/// tensor-parallel indexes (rank mod TP), each keeping <see cref="PlannedBucket.ShardBytes"/> of a bucket. On the stager's node
/// the stager packs each member's part, and the parts of the classes it proxies, and scatters them over NVLink; then, where the
/// relay applies and pays, each class broadcasts its part from its head there to its members on other nodes, over its own ring,
/// all classes at once. Bytes are per bucket.
/// </summary>
/// <param name="Node">The stager's node.</param>
/// <param name="ScatterEgress">What the stager sends over NVLink: the parts of the other members of its node and of the classes they proxy.</param>
/// <param name="ScatterIngress">The most one GPU of the stager's node takes in over NVLink.</param>
/// <param name="HeldPart">The most one GPU holds of the bucket once it arrived: its part and the parts it proxies (the bucket where broadcast).</param>
/// <param name="RelayEgress">What leaves the stager's node over its NICs: one part per relay.</param>
/// <param name="HeadEgress">The most one GPU of the stager's node sends to the network: a part per relay it heads.</param>
/// <param name="Ingress">Per other node the relays reach: the parts of the classes it has members of.</param>
/// <param name="Forward">Per other node: the parts its rings pass on to a further node.</param>
/// <param name="Ring">Members of the longest relay ring (head included).</param>
public sealed record BucketRoute(RouteKind Kind, int Node, long ScatterEgress, long ScatterIngress, long HeldPart, long RelayEgress, long HeadEgress,
    IReadOnlyList<(int Node, long Bytes)> Ingress, IReadOnlyList<(int Node, long Bytes)> Forward, int Ring)
{
    /// <summary>The most one other node takes in.</summary>
    public long MaxIngress => Ingress.Count == 0 ? 0 : Ingress.Max(x => x.Bytes);

    /// <summary>The route of every bucket of <paramref name="buckets"/> among the ranks that receive <paramref name="s"/>'s update.</summary>
    public static IReadOnlyList<BucketRoute> Plan(Scenario s, IReadOnlyList<PlannedBucket> buckets)
    {
        var hostOf = Enumerable.Range(0, s.GroupRanks).Select(s.Cluster.NodeOf).ToArray();
        var classOf = Enumerable.Range(0, s.GroupRanks).Select(r => r % s.TensorParallel).ToArray();
        var hosts = new Dictionary<int, Host>();
        return [.. buckets.Select(b =>
        {
            var node = hostOf[b.Stager];
            var host = hosts.TryGetValue(node, out var h) ? h : hosts[node] = Host.Of(node, hostOf, classOf);
            var part = b.ShardBytes;
            // Across nodes a bucket is broadcast whole (and cut) where classes do not relay, or where a relay would not pay.
            if (host.Relay is { } relay && (!s.RelaysClasses || !relay.Pays(Enumerable.Repeat(part, s.TensorParallel).ToArray(), b.Bytes, hostOf)))
            {
                return new BucketRoute(RouteKind.Broadcast, node, 0, 0, b.Bytes, 0, 0, [], [], 0);
            }
            // The stager keeps its own parts; every other member of its node takes its own and those it proxies.
            var egress = host.Local.Where(m => m.Rank != b.Stager).Sum(m => m.Parts) * part;
            var ingress = host.Local.Where(m => m.Rank != b.Stager).Select(m => m.Parts).DefaultIfEmpty(0).Max() * part;
            var held = host.Local.Max(m => m.Parts) * part;
            return host.Relay is null
                ? new BucketRoute(RouteKind.Scatter, node, egress, ingress, held, 0, 0, [], [], 0)
                : new BucketRoute(RouteKind.ScatterAndRelay, node, egress, ingress, held, host.Relay.Relays.Count * part, host.Local.Max(m => m.Heads) * part,
                    [.. host.Ingress.Select(x => (x.Node, x.Parts * part))], [.. host.Forward.Select(x => (x.Node, x.Parts * part))], host.Ring);
        })];
    }

    /// <summary>What the routes from one stager node share, in parts: its members (with the parts each takes and the relays each heads) and its relays.</summary>
    private sealed record Host(ClassRelay? Relay, (int Rank, int Parts, int Heads)[] Local, (int Node, int Parts)[] Ingress, (int Node, int Parts)[] Forward, int Ring)
    {
        public static Host Of(int node, int[] hostOf, int[] classOf)
        {
            var relay = ClassRelay.For(node, hostOf, classOf);
            if (relay is null)
            {
                return new Host(null, [.. Enumerable.Range(0, hostOf.Length).Where(m => hostOf[m] == node).Select(m => (m, 1, 0))], [], [], 0);
            }
            var local = relay.Local.Select(m => (m, 1 + relay.ProxiedBy(m).Count(), relay.Relays.Count(r => r.Head == m))).ToArray();
            // A ring enters each node it reaches once, and leaves it again unless its last member is there.
            var ingress = relay.Relays.SelectMany(r => r.Members.Skip(1).Select(m => hostOf[m]).Distinct());
            var forward = relay.Relays.SelectMany(r => r.Members.Skip(1).Select(m => hostOf[m]).Distinct().Where(h => h != hostOf[r.Members[^1]]));
            static (int, int)[] Count(IEnumerable<int> nodes) => [.. nodes.GroupBy(h => h).OrderBy(g => g.Key).Select(g => (g.Key, g.Count()))];
            return new Host(relay, local, Count(ingress), Count(forward), relay.Relays.Max(r => r.Members.Length));
        }
    }
}
