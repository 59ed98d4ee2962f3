using System.Net;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// Where a group's members live (pure): hosts in order of their first member, each host's members,
/// and for a broadcast from a given root the TCP chain over host leaders (the root leads its own host,
/// the lowest member leads every other).
/// </summary>
internal sealed class Topology
{
    public Topology(IReadOnlyList<string> hostIds, IReadOnlyList<IPEndPoint> endpoints)
    {
        var order = hostIds.Distinct(StringComparer.Ordinal).ToList();
        HostOf = hostIds.Select(h => order.IndexOf(h)).ToArray();
        Hosts = order.Select((_, h) => Enumerable.Range(0, hostIds.Count).Where(r => HostOf[r] == h).ToArray()).ToArray();
        Endpoints = endpoints;
    }

    /// <summary>Group rank → host index.</summary>
    public int[] HostOf { get; }

    /// <summary>Host index → its members (group ranks, ascending).</summary>
    public int[][] Hosts { get; }

    public IReadOnlyList<IPEndPoint> Endpoints { get; }

    public int[] LocalMembers(int rank) => Hosts[HostOf[rank]];

    /// <summary>The member that writes a broadcast from <paramref name="root"/> into host <paramref name="host"/>'s ring.</summary>
    public int Leader(int root, int host) => HostOf[root] == host ? root : Hosts[host][0];

    /// <summary>This member's neighbours in the chain of host leaders (−1 for none), and whether it leads its host.</summary>
    public (int Previous, int Next, bool IsLeader) Chain(int root, int rank)
    {
        var rootHost = HostOf[root];
        var order = new List<int> { rootHost };
        order.AddRange(Enumerable.Range(0, Hosts.Length).Where(h => h != rootHost));
        var position = order.IndexOf(HostOf[rank]);
        var isLeader = Leader(root, HostOf[rank]) == rank;
        var previous = position > 0 ? Leader(root, order[position - 1]) : -1;
        var next = position + 1 < order.Count ? Leader(root, order[position + 1]) : -1;
        return (previous, next, isLeader);
    }
}
