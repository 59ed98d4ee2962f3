using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Simulation;

/// <summary>
/// One simulated update: a checkpoint spread over <see cref="Gpus"/> ranks (one parameter server and one
/// inference worker shard per GPU, instances of <see cref="TensorParallel"/> GPUs) on a cluster.
/// </summary>
/// <param name="FreeMemory">Free device memory per GPU for the update's buffers; null: the cluster's.</param>
public sealed record Scenario(ModelInventory Model, ClusterSpec Cluster, int Gpus, int TensorParallel,
    SimulatedMethod Method = SimulatedMethod.Broadcast, SimulatedDesign Design = SimulatedDesign.Ours,
    long? FreeMemory = null, long MaxBucketSize = Planning.BucketSizing.DefaultMaxBucketSize)
{
    public long Free => FreeMemory ?? Cluster.FreeMemory;

    /// <summary>The ranks that receive the update: all (broadcast) or the first instance (P2P, as the original's benchmark).</summary>
    public int GroupRanks => Method == SimulatedMethod.Broadcast ? Gpus : Math.Min(Gpus, TensorParallel);

    public IEnumerable<string> Problems()
    {
        if (Gpus < 1) yield return "--gpus must be at least 1";
        if (TensorParallel < 1 || TensorParallel > Gpus || Gpus % TensorParallel != 0) yield return $"--tp {TensorParallel} must divide --gpus {Gpus}";
        foreach (var p in Cluster.Problems()) yield return p;
        if (Model.Tensors.Count == 0) yield return $"model {Model.Name} has no tensors";
    }
}
