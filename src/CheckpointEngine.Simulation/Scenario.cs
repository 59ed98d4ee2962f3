using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Simulation;

/// <summary>
/// One simulated update: a checkpoint spread over <see cref="Gpus"/> ranks (one parameter server and one
/// inference worker shard per GPU, instances of <see cref="TensorParallel"/> GPUs) on a cluster.
/// </summary>
/// <param name="FreeMemory">Free device memory per GPU for the update's buffers; null: the cluster's.</param>
/// <param name="InFlight">Buckets in flight at once for <see cref="SimulatedDesign.ShardAware"/>; null: as the parameter server picks by default.</param>
/// <param name="ClassRelays">Whether <see cref="SimulatedDesign.ShardAware"/> relays classes between nodes; null: as the parameter server picks on GPUs.</param>
public sealed record Scenario(ModelInventory Model, ClusterSpec Cluster, int Gpus, int TensorParallel,
    SimulatedMethod Method = SimulatedMethod.Broadcast, SimulatedDesign Design = SimulatedDesign.Ours,
    long? FreeMemory = null, long MaxBucketSize = Planning.BucketSizing.DefaultMaxBucketSize, int? InFlight = null, bool? ClassRelays = null)
{
    /// <summary>
    /// The buckets in flight that <see cref="SimulatedDesign.ShardAware"/> takes unless told, across nodes by broadcast (the GPU default once
    /// the engines declare what they keep, <c>ParameterServer.GpuBucketsInFlight</c>); one inside a node, and by P2P, as built.
    /// </summary>
    public const int DefaultInFlight = Server.ParameterServer.GpuBucketsInFlight;

    public long Free => FreeMemory ?? Cluster.FreeMemory;

    /// <summary>Buckets whose transfers may run at once: several in the shard-aware loop across nodes by broadcast (see <see cref="DefaultInFlight"/>), else one.</summary>
    public int Window => Design switch
    {
        SimulatedDesign.ShardAwarePipelined => 2,
        SimulatedDesign.ShardAware => InFlight ?? (Method == SimulatedMethod.Broadcast && Cluster.Nodes(GroupRanks) > 1 ? DefaultInFlight : 1),
        _ => 1,
    };

    /// <summary>
    /// Whether classes relay their parts between nodes where it pays: in <see cref="SimulatedDesign.ShardAware"/> as the parameter server
    /// decides on GPUs unless told (with several buckets in flight, or from <c>ParameterServer.GpuRelayHosts</c> nodes on; else a bucket
    /// that crosses nodes is broadcast whole and cut), always in the pipelined what-if.
    /// </summary>
    public bool RelaysClasses => Design == SimulatedDesign.ShardAwarePipelined
        || Design == SimulatedDesign.ShardAware && (ClassRelays ?? Server.ParameterServer.RelaysByDefault(hostBackend: false, Cluster.Nodes(GroupRanks), Window));

    /// <summary>Whether buckets move as <see cref="BucketRoute"/>s: scatter inside the stager's node, class relays between nodes.</summary>
    public bool Routed => Design is SimulatedDesign.ShardAware or SimulatedDesign.ShardAwarePipelined;

    /// <summary>Whether each worker reloads only its part.</summary>
    public bool ShardAware => Routed || Design == SimulatedDesign.ShardAwareBroadcast;

    /// <summary>The ranks that receive the update: all (broadcast) or the first instance (P2P, as the original's benchmark).</summary>
    public int GroupRanks => Method == SimulatedMethod.Broadcast ? Gpus : Math.Min(Gpus, TensorParallel);

    public IEnumerable<string> Problems()
    {
        if (Gpus < 1) yield return "--gpus must be at least 1";
        if (TensorParallel < 1 || TensorParallel > Gpus || Gpus % TensorParallel != 0) yield return $"--tp {TensorParallel} must divide --gpus {Gpus}";
        foreach (var p in Cluster.Problems()) yield return p;
        if (InFlight is { } w && (w < 1 || Design != SimulatedDesign.ShardAware)) yield return $"--in-flight {w}: takes a count of at least 1, with --design shard-aware only";
        if (ClassRelays is not null && Design != SimulatedDesign.ShardAware) yield return "--class-relays: with --design shard-aware only";
        if (Model.Tensors.Count == 0) yield return $"model {Model.Name} has no tensors";
    }
}
