using CheckpointEngine.Simulation.Clusters;

namespace CheckpointEngine.Simulation;

/// <summary>
/// Charges each stage of an update on a cluster. Bulk transfers run at a link's nominal bandwidth
/// times a fitted efficiency; every call pays a fitted fixed latency. The broadcast is a pipelined ring
/// (NCCL's algorithm for broadcast): its bytes cross every GPU's NVLink once and, across nodes, every
/// node's NICs once, and its first bytes need one hop per rank to reach the last. Shard-aware moves are priced by what
/// crosses each link: a scatter by the stager's NVLink egress and a receiver's ingress, class relays by what a node's
/// NICs send or take in (see <see cref="BucketRoute"/>).
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
    /// (equal for a plain broadcast); charged to the slower of its NVLink and network legs.
    /// </summary>
    public Cost Broadcast(long gpuBytes, long nodeBytes, int ranks, int nodes)
    {
        if (ranks <= 1)
        {
            return new Cost(CostCategory.NvLink, 0);
        }
        var nvlink = NvLinkSeconds(gpuBytes);
        var network = nodes > 1 ? NetworkSeconds(nodeBytes) : 0;
        return new Cost(network > nvlink ? CostCategory.Network : CostCategory.NvLink, Math.Max(nvlink, network), Parameters.CallLatency + (ranks - 1) * HopLatency);
    }

    /// <summary>
    /// A scatter inside one node (NCCL grouped send/recv, one launch, one hop): the sender's NVLink egress carries
    /// <paramref name="egressBytes"/> (the other members' parts), the busiest receiver's ingress <paramref name="ingressBytes"/>.
    /// </summary>
    public Cost Scatter(long egressBytes, long ingressBytes) =>
        egressBytes <= 0 ? new(CostCategory.NvLink, 0) : new(CostCategory.NvLink, NvLinkSeconds(Math.Max(egressBytes, ingressBytes)), Parameters.CallLatency + HopLatency);

    /// <summary>
    /// Class relays between nodes, all at once, each a ring broadcast of a part of <paramref name="partBytes"/> over its own
    /// communicator: bound by the most one node sends or takes in over its NICs (<paramref name="nodeBytes"/>), the most one GPU
    /// sends through its share of them (<paramref name="gpuBytes"/>: a head of several relays), and a part's crossing of NVLink
    /// where a ring passes several GPUs of a node; its first bytes need a hop per member of the longest ring (<paramref name="ring"/>).
    /// </summary>
    public Cost Relay(long partBytes, long nodeBytes, long gpuBytes, int ring)
    {
        var network = Math.Max(NetworkSeconds(nodeBytes), NetworkSeconds(gpuBytes * Cluster.GpusPerNode));
        var nvlink = NvLinkSeconds(partBytes);
        return new Cost(network >= nvlink ? CostCategory.Network : CostCategory.NvLink, Math.Max(network, nvlink), Parameters.CallLatency + (ring - 1) * HopLatency);
    }

    /// <summary>Seconds for <paramref name="bytes"/> to cross one GPU's NVLink at the fitted efficiency.</summary>
    public double NvLinkSeconds(long bytes) => bytes / (Parameters.LinkEfficiency * Cluster.NvLink);

    /// <summary>Seconds for <paramref name="bytes"/> to cross one node's NICs, all together, at the fitted efficiency.</summary>
    public double NetworkSeconds(long bytes) => bytes / (Parameters.LinkEfficiency * Cluster.NodeNetwork);

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
