using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Simulation.Calibration;

/// <summary>
/// One measurement of the original's README benchmark table (MoonshotAI/checkpoint-engine, "Benchmark";
/// examples/update.py with vLLM v0.10.2rc1): an update of a model on a cluster, with the bucket size it reports.
/// </summary>
/// <param name="HeldOut">Predicted, never fitted on.</param>
public sealed record PublishedRow(ModelPreset Model, ClusterSpec Cluster, int Gpus, int TensorParallel, SimulatedMethod Method,
    double BucketGiB, double Seconds, bool HeldOut)
{
    /// <summary>
    /// Free device memory that makes the original size the bucket the table reports (90% of it, a third per
    /// buffer); for the 8 GiB rows, the cap binds and any amount above that gives the same plan.
    /// </summary>
    public long FreeMemory => (long)Math.Ceiling(BucketGiB * (1L << 30) * 3 / Planning.BucketSizing.DefaultFraction) + (1L << 20);

    public Scenario Scenario(SimulatedDesign design) =>
        new(Model.Inventory, Cluster, Gpus, TensorParallel, Method, design, FreeMemory);

    public string Label => $"{Model.Description.Split(' ')[0]} {Gpus}×{Cluster.Name.ToUpperInvariant()} TP{TensorParallel} {(Method == SimulatedMethod.P2P ? "p2p" : "broadcast")}";

    /// <summary>The table: broadcast and P2P for each model; the 8- and 16-GPU rows fit, the 256-GPU rows are held out.</summary>
    public static IReadOnlyList<PublishedRow> All { get; } =
    [
        new(ModelPresets.Glm45Air, ClusterPresets.H800, 8, 8, SimulatedMethod.Broadcast, 3.02, 3.47, false),
        new(ModelPresets.Glm45Air, ClusterPresets.H800, 8, 8, SimulatedMethod.P2P, 3.02, 4.12, false),
        new(ModelPresets.Qwen3, ClusterPresets.H800, 8, 8, SimulatedMethod.Broadcast, 2.67, 6.22, false),
        new(ModelPresets.Qwen3, ClusterPresets.H800, 8, 8, SimulatedMethod.P2P, 2.68, 7.10, false),
        new(ModelPresets.DeepSeekV31, ClusterPresets.H20, 16, 16, SimulatedMethod.Broadcast, 5.39, 10.19, false),
        new(ModelPresets.DeepSeekV31, ClusterPresets.H20, 16, 16, SimulatedMethod.P2P, 5.41, 11.80, false),
        new(ModelPresets.KimiK2, ClusterPresets.H20, 16, 16, SimulatedMethod.Broadcast, 5.89, 14.36, false),
        new(ModelPresets.KimiK2, ClusterPresets.H20, 16, 16, SimulatedMethod.P2P, 5.91, 17.49, false),
        new(ModelPresets.DeepSeekV31, ClusterPresets.H20, 256, 16, SimulatedMethod.Broadcast, 8.00, 11.33, true),
        new(ModelPresets.DeepSeekV31, ClusterPresets.H20, 256, 16, SimulatedMethod.P2P, 8.00, 11.81, true),
        new(ModelPresets.KimiK2, ClusterPresets.H20, 256, 16, SimulatedMethod.Broadcast, 8.00, 16.04, true),
        new(ModelPresets.KimiK2, ClusterPresets.H20, 256, 16, SimulatedMethod.P2P, 8.00, 16.75, true),
    ];
}
