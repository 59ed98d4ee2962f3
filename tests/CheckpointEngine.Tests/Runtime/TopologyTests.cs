using System.Net;
using CheckpointEngine.Runtime.Collectives;
using CsCheck;

namespace CheckpointEngine.Tests.Runtime;

public class TopologyTests
{
    private static Topology Make(params string[] hostIds) =>
        new(hostIds, hostIds.Select((_, r) => new IPEndPoint(IPAddress.Loopback, 10_000 + r)).ToArray());

    [Fact]
    public void Hosts_OrderedByFirstMember_MembersAscending()
    {
        var t = Make("b", "a", "b", "c", "a");
        Assert.Equal([0, 1, 0, 2, 1], t.HostOf);
        Assert.Equal(3, t.Hosts.Length);
        Assert.Equal([0, 2], t.Hosts[0]);
        Assert.Equal([1, 4], t.Hosts[1]);
        Assert.Equal([3], t.Hosts[2]);
        Assert.Equal([1, 4], t.LocalMembers(4));
        Assert.Equal(10_003, t.Endpoints[3].Port);
    }

    [Fact]
    public void Chain_SingleHost_NoNeighboursAndOnlyRootLeads()
    {
        var t = Make("h", "h", "h", "h");
        for (var root = 0; root < 4; root++)
        {
            for (var rank = 0; rank < 4; rank++)
            {
                Assert.Equal((-1, -1, rank == root), t.Chain(root, rank));
            }
        }
    }

    [Fact]
    public void Chain_RootOnLaterHost_ChainStartsThereThenHostOrder()
    {
        // Hosts: A = {0, 3}, B = {1, 4}, C = {2, 5}. Root 4 leads B; A and C are led by 0 and 2.
        var t = Make("A", "B", "C", "A", "B", "C");
        Assert.Equal((-1, 0, true), t.Chain(4, 4));
        Assert.Equal((4, 2, true), t.Chain(4, 0));
        Assert.Equal((0, -1, true), t.Chain(4, 2));
        Assert.False(t.Chain(4, 1).IsLeader);
        Assert.False(t.Chain(4, 3).IsLeader);
        Assert.False(t.Chain(4, 5).IsLeader);
        Assert.Equal(4, t.Leader(4, 1));
        Assert.Equal(0, t.Leader(4, 0));
        Assert.Equal(2, t.Leader(4, 2));
    }

    [Fact]
    public void Chain_RandomHostAssignments_SingleChainFromRootCoveringEveryHostOnce()
    {
        Gen.Int[1, 5].SelectMany(hosts => Gen.Int[0, hosts - 1].Array[1, 12]).Sample(assignment =>
        {
            var t = Make(assignment.Select(h => $"host{h}").ToArray());
            var n = assignment.Length;
            // Hosts in order of first member, each listing its members ascending.
            var expectedOrder = assignment.Distinct().ToList();
            Assert.Equal(expectedOrder.Count, t.Hosts.Length);
            for (var h = 0; h < t.Hosts.Length; h++)
            {
                Assert.Equal(Enumerable.Range(0, n).Where(r => assignment[r] == expectedOrder[h]), t.Hosts[h]);
            }
            for (var root = 0; root < n; root++)
            {
                var chains = Enumerable.Range(0, n).Select(r => t.Chain(root, r)).ToArray();
                var leaders = Enumerable.Range(0, n).Where(r => chains[r].IsLeader).ToList();
                // One leader per host: the root on its own host, the lowest member elsewhere.
                Assert.Equal(t.Hosts.Length, leaders.Count);
                for (var h = 0; h < t.Hosts.Length; h++)
                {
                    var expected = t.HostOf[root] == h ? root : t.Hosts[h][0];
                    Assert.Equal(expected, t.Leader(root, h));
                    Assert.Contains(expected, leaders);
                }
                // Follow next from the root: every host exactly once, previous mirrors next.
                Assert.Equal(-1, chains[root].Previous);
                var visited = new List<int>();
                for (var at = root; at >= 0; at = chains[at].Next)
                {
                    Assert.True(chains[at].IsLeader);
                    Assert.DoesNotContain(t.HostOf[at], visited);
                    visited.Add(t.HostOf[at]);
                    if (chains[at].Next >= 0)
                    {
                        Assert.Equal(at, chains[chains[at].Next].Previous);
                    }
                }
                Assert.Equal(t.Hosts.Length, visited.Count);
                Assert.Single(leaders, r => chains[r].Previous == -1);
                Assert.Single(leaders, r => chains[r].Next == -1);
                if (t.Hosts.Length == 1)
                {
                    Assert.All(chains, c => Assert.Equal((-1, -1), (c.Previous, c.Next)));
                }
            }
        });
    }
}
