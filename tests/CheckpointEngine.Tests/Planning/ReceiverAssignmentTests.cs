using CheckpointEngine.Planning;
using CsCheck;

namespace CheckpointEngine.Tests.Planning;

/// <summary>Expected assignments are worked out from the algorithm: owners' devices interleaved, dealt in rounds with distinct owner devices.</summary>
public class ReceiverAssignmentTests
{
    private static (int Owner, string Bucket)[] Buckets(int count) => [.. Enumerable.Range(0, count).Select(i => (i % 8, $"bucket{i}"))];

    /// <summary>8 receiving ranks, <paramref name="perLocalDevice"/> ranks per network device; owners one per device.</summary>
    [Theory]
    [InlineData(1, 80)]
    [InlineData(2, 80)]
    [InlineData(4, 80)]
    [InlineData(1, 13)]
    [InlineData(2, 13)]
    [InlineData(4, 13)]
    public void Assign_OneOwnerPerDevice_DealsRoundRobinToGroupLeaders(int perLocalDevice, int count)
    {
        var groups = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, 8), r => $"nic{r / perLocalDevice}");
        var result = ReceiverAssignment.Assign(Buckets(count), o => $"rdma{o}", groups);
        var receivers = 8 / perLocalDevice;
        // Owners' devices are already interleaved (bucket i is owner i mod 8), so the order is kept and
        // receiver k (the lowest rank of local device k) takes every receivers-th bucket.
        Assert.Equal(Enumerable.Range(0, count).Select(i => (i % receivers * perLocalDevice, $"bucket{i}")), result);
    }

    [Fact]
    public void Assign_TwoOwnersPerDevice_InterleavesDevicesAndNeverDoublesOneInARound()
    {
        var groups = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, 8), r => $"nic{r}");
        var result = ReceiverAssignment.Assign(Buckets(80), o => $"rdma{o / 2}", groups);
        // Four owner devices: only four receivers (ranks 0-3). Device d holds owners 2d and 2d+1, whose
        // buckets alternate (2d, 2d+1, 2d+8, 2d+9, ...); column c of the interleaving takes the c-th bucket of each device.
        var expected = new List<(int, string)>();
        for (var column = 0; column < 20; column++)
        {
            for (var device = 0; device < 4; device++)
            {
                var bucket = column / 2 * 8 + 2 * device + column % 2;
                expected.Add((device, $"bucket{bucket}"));
            }
        }
        Assert.Equal(expected, result);
    }

    [Fact]
    public void Assign_FewerReceiversThanOwners_EveryBucketOnceAndRoundsDistinct()
    {
        var groups = ReceiverAssignment.GroupByDevice([4, 5], _ => "nic0");
        var result = ReceiverAssignment.Assign(Buckets(13), o => $"rdma{o}", groups);
        Assert.All(result, r => Assert.Equal(4, r.Receiver));
        Assert.Equal(Buckets(13).Select(b => b.Bucket), result.Select(r => r.Bucket));
    }

    [Fact]
    public void Assign_AllBucketsOnOneOwnerDevice_OneReceiverAtATime()
    {
        var groups = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, 4), r => $"nic{r}");
        var result = ReceiverAssignment.Assign(Buckets(6), _ => "rdma0", groups);
        Assert.All(result, r => Assert.Equal(0, r.Receiver)); // min(4 groups, 1 device) = 1 receiver.
    }

    [Fact]
    public void Assign_AnEmptyReceiverGroup_IsABug()
    {
        var e = Assert.Throws<ArgumentException>(() => ReceiverAssignment.Assign([(0, "b0")], _ => "nic0", [[1], []]));
        Assert.StartsWith("every receiver group needs at least one rank", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => ReceiverAssignment.Assign([(0, "b0")], _ => "nic0", []));
    }

    [Fact]
    public void Assign_NoBuckets_IsEmpty() =>
        Assert.Empty(ReceiverAssignment.Assign(Array.Empty<(int, string)>(), o => "x", [[0]]));

    [Fact]
    public void Assign_Properties() =>
        Gen.Select(Gen.Int[0, 60], Gen.Int[1, 8], Gen.Int[1, 8], Gen.Int[1, 4]).Sample((count, owners, perOwnerDevice, perLocal) =>
        {
            var buckets = Enumerable.Range(0, count).Select(i => (Owner: i % owners, Bucket: i)).ToArray();
            string Device(int o) => $"d{o / perOwnerDevice}";
            var groups = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, 8), r => $"n{r / perLocal}");
            var result = ReceiverAssignment.Assign(buckets, Device, groups);
            Assert.Equal(buckets.Select(b => b.Bucket).Order(), result.Select(r => r.Bucket).Order());
            var leaders = groups.Select(g => g.Min()).ToHashSet();
            Assert.All(result, r => Assert.Contains(r.Receiver, leaders));
            // Within a round (receivers in increasing order), owner devices are distinct.
            var round = new HashSet<string>();
            var last = -1;
            foreach (var (receiver, bucket) in result)
            {
                if (receiver <= last)
                {
                    round.Clear();
                }
                Assert.True(round.Add(Device(buckets[bucket].Owner)));
                last = receiver;
            }
        }, iter: 300);
}
