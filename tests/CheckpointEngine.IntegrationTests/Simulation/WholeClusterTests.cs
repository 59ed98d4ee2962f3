using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.IntegrationTests.Simulation;

/// <summary>A whole published model over a whole cluster: seconds under mutation testing's instrumentation, so not a unit test.</summary>
public sealed class WholeClusterTests
{
    [Fact]
    public void TwoThousandGpus_Simulate()
    {
        var plan = SimulationPlan.Build(new Scenario(ModelPresets.KimiK2.Inventory, ClusterPresets.H20, 2048, 16, Design: SimulatedDesign.Ours));
        var r = UpdateSimulator.Run(plan, CostParameters.Calibrated);
        Assert.Equal(ModelPresets.KimiK2.Inventory.Tensors.Count, plan.Buckets.Sum(b => b.Tensors));
        Assert.Equal(256, plan.GroupNodes);
        Assert.True(r.Seconds > 0 && double.IsFinite(r.Seconds));
    }
}
