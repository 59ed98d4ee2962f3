using CheckpointEngine.Simulation.Clusters;

namespace CheckpointEngine.Simulation;

/// <summary>
/// Charges each stage of an update on a cluster. Bulk transfers run at a link's nominal bandwidth
/// times a fitted efficiency; every call pays a fitted fixed latency. The broadcast is a pipelined ring
/// (NCCL's algorithm for broadcast): its bytes cross every GPU's NVLink once and, across nodes, every
/// node's NICs once, and its first bytes need one hop per rank to reach the last.
/// </summary>
public sealed class CostModel(ClusterSpec cluster, CostParameters parameters)
{
    /// <summary>Time for a pipeline slice to move one hop along a ring; a fixed assumption (NCCL's ring step latency is a few µs), not fitted.</summary>
    public const double HopLatency = 5e-6;

    public ClusterSpec Cluster { get; } = cluster;

    public CostParameters Parameters { get; } = parameters;

    /// <summary>A host-to-device copy of <paramref name="bytes"/> into one GPU (its own PCIe link).</summary>
    public Cost HostToDevice(long bytes) => new(CostCategory.Staging, bytes / Cluster.HostToDevice);

    /// <summary>A copy within one GPU's memory (the original's staging buffer → broadcast buffer).</summary>
    public Cost DeviceCopy(long bytes) => new(CostCategory.Staging, bytes / Cluster.DeviceCopy);

    /// <summary>
    /// A broadcast among <paramref name="ranks"/> ranks on <paramref name="nodes"/> nodes in which each GPU
    /// receives <paramref name="gpuBytes"/> and each node <paramref name="nodeBytes"/> from the network
    /// (equal for a plain broadcast; less per GPU when each receives only its shard).
    /// </summary>
    public Cost Broadcast(long gpuBytes, long nodeBytes, int ranks, int nodes)
    {
        if (ranks <= 1)
        {
            return new Cost(CostCategory.Link, 0);
        }
        var efficiency = Parameters.LinkEfficiency;
        var link = gpuBytes / (efficiency * Cluster.NvLink);
        if (nodes > 1)
        {
            link = Math.Max(link, nodeBytes / (efficiency * Cluster.NodeNetwork));
        }
        return new Cost(CostCategory.Link, link, Parameters.CallLatency + (ranks - 1) * HopLatency);
    }

    /// <summary>A small all-reduce or all-gather among <paramref name="ranks"/> ranks (the per-bucket agreement): log₂ P latency-bound steps.</summary>
    public Cost Agreement(int ranks) =>
        new(CostCategory.Latency, 0, ranks <= 1 ? 0 : Parameters.CallLatency * Math.Ceiling(Math.Log2(ranks)));

    /// <summary>The worker takes <paramref name="bytes"/> of a bucket into its model and replies.</summary>
    public Cost Reload(long bytes) => new(CostCategory.Reload, bytes / Parameters.ReloadBandwidth, Parameters.CallLatency);

    /// <summary>
    /// A one-sided read of <paramref name="bytes"/> from another host's pinned memory into this GPU: bounded by
    /// the reader's NIC (receivers are one per NIC group, and concurrent reads hit different owner NICs) and its PCIe link.
    /// </summary>
    public Cost RdmaRead(long bytes) =>
        new(CostCategory.Staging, bytes / Math.Min(Parameters.RdmaEfficiency * Cluster.NicBandwidth, Cluster.HostToDevice), Parameters.CallLatency);

    /// <summary>Once per update: the engine's request round trip and its post-load hook.</summary>
    public Cost Finish() => new(CostCategory.Latency, 0, Parameters.FinishOverhead);
}
