using CheckpointEngine.Planning;
using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Calibration;
using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Tests.Simulation;

public sealed class SimulationPlanTests
{
    private static readonly ModelInventory Small = InventoryBuilder.Build("small", PresetSample.Fit(ModelPresets.KimiK2, 256L << 20, layers: 6, experts: 16));

    /// <summary>Room for three buckets a little larger than the largest tensor: owners get several buckets.</summary>
    private static readonly long Free = (long)(Small.LargestTensor * 3.6 / 0.9);

    private static Scenario Scenario(SimulatedDesign design, SimulatedMethod method = SimulatedMethod.Broadcast, int gpus = 16) =>
        new(Small, ClusterPresets.H20, gpus, 8, method, design, Free);

    [Fact]
    public void Ours_BucketsAreTheRealPlannersCutOfTheMetasInInterleavedOrder()
    {
        var plan = SimulationPlan.Build(Scenario(SimulatedDesign.Ours));
        var sizing = BucketSizing.Plan(Free, plan.Metas.LargestTensor, plan.Metas.Ranks.Max(r => r.TotalBytes));
        Assert.Equal((sizing.BucketSize, sizing.Slots), (plan.BucketSize, plan.Slots));
        var expected = BucketPlanner.Interleave(plan.Metas.Ranks.Select(r => BucketPlanner.Cut(r, sizing.BucketSize)));
        Assert.Equal(expected.Select(b => (b.Owner, b.Index, b.Size, b.Items.Count)), plan.Buckets.Select(b => (b.Owner, b.Step, b.Bytes, b.Tensors)));
        Assert.Equal(Small.Tensors.Count, plan.Buckets.Sum(b => b.Tensors));
    }

    [Fact]
    public void Ours_SharesAreBalancedByBytes_OriginalsByTensorCountInNameOrder()
    {
        var ours = SimulationPlan.Build(Scenario(SimulatedDesign.Ours)).Metas;
        var original = SimulationPlan.Build(Scenario(SimulatedDesign.Original)).Metas;
        Assert.True(ours.Ranks.Max(r => r.TotalBytes) <= original.Ranks.Max(r => r.TotalBytes));
        var counts = original.Ranks.Select(r => r.Buffers.Sum(b => b.Metas.Count)).ToList();
        Assert.Equal((Small.Tensors.Count + 15) / 16, counts[0]);
        Assert.Equal(Small.Tensors.Take(counts[0]).Select(t => t.Name), original.Ranks[0].Buffers.SelectMany(b => b.Metas).Select(m => m.Name));
    }

    [Fact]
    public void P2P_ReceiversAndOrderComeFromReceiverAssignment()
    {
        var plan = SimulationPlan.Build(Scenario(SimulatedDesign.Ours, SimulatedMethod.P2P));
        Assert.Equal(8, plan.GroupRanks);
        string Device(int r) => plan.Metas.Ranks[r].NetDevice!;
        var expected = ReceiverAssignment.Assign(
            plan.Metas.Ranks.SelectMany(r => BucketPlanner.Cut(r, plan.BucketSize)).Select(b => (b.Owner, b)).ToList(), Device,
            ReceiverAssignment.GroupByDevice(Enumerable.Range(0, 8), Device));
        Assert.Equal(expected.Select(a => (a.Receiver, a.Bucket.Owner, a.Bucket.Size)), plan.Buckets.Select(b => (b.Stager, b.Owner, b.Bytes)));
        Assert.All(plan.Buckets, b => Assert.InRange(b.Stager, 0, 7));
    }

    [Fact]
    public void Original_P2P_RunsStepByStepOverReceivers()
    {
        var plan = SimulationPlan.Build(Scenario(SimulatedDesign.Original, SimulatedMethod.P2P));
        Assert.Equal(plan.Buckets.Select(b => b.Step).Order(), plan.Buckets.Select(b => b.Step));
    }

    [Fact]
    public void OriginalSizing_GivesTheBucketTheTableReports()
    {
        foreach (var row in PublishedRow.All)
        {
            var (size, slots) = SimulationPlan.OriginalSizing(row.FreeMemory, 1L << 30, 8L << 30);
            Assert.Equal(3, slots);
            Assert.Equal(row.BucketGiB, Math.Round(size / (double)(1L << 30), 2));
        }
    }

    [Fact]
    public void ShardBytes_SplitMatricesOverTensorParallelRanks()
    {
        var plan = SimulationPlan.Build(Scenario(SimulatedDesign.ShardAware));
        Assert.All(plan.Buckets, b => Assert.InRange(b.ShardBytes, b.Bytes / 8 - b.Tensors * 256, b.Bytes));
        Assert.True(plan.Buckets.Sum(b => b.ShardBytes) < plan.Buckets.Sum(b => b.Bytes) / 6);
    }

    [Fact]
    public void Build_RejectsATensorParallelSizeThatDoesNotDivideTheGpus() =>
        Assert.Contains("--tp", Assert.Throws<CheckpointEngineException>(() => SimulationPlan.Build(Scenario(SimulatedDesign.Ours, gpus: 12))).Message);
}
