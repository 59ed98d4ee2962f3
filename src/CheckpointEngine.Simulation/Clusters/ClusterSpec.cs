namespace CheckpointEngine.Simulation.Clusters;

/// <summary>
/// One node type of a GPU cluster, in the units the cost model charges: bytes per second per link,
/// nominal (what the hardware is sold as); the calibrated cost model applies efficiencies on top.
/// </summary>
/// <param name="GpusPerNode">GPUs per node; ranks fill nodes in order (rank r on node r / GpusPerNode).</param>
/// <param name="DeviceMemory">Memory of one GPU.</param>
/// <param name="FreeMemory">Device memory left for the update's buffers while the inference engine runs (vLLM keeps ~90% for itself).</param>
/// <param name="HostToDevice">Pinned host-to-device copy bandwidth of one GPU (PCIe).</param>
/// <param name="DeviceCopy">Device-to-device copy bandwidth within one GPU (HBM read + write).</param>
/// <param name="NvLink">Per-GPU NVLink bandwidth in one direction.</param>
/// <param name="NicsPerNode">RDMA NICs per node; GPUs share them in equal groups.</param>
/// <param name="NicBandwidth">Bandwidth of one NIC in one direction.</param>
public sealed record ClusterSpec(string Name, string Description, int GpusPerNode, long DeviceMemory, long FreeMemory,
    double HostToDevice, double DeviceCopy, double NvLink, int NicsPerNode, double NicBandwidth)
{
    public int Nodes(int gpus) => (gpus + GpusPerNode - 1) / GpusPerNode;

    public int NodeOf(int rank) => rank / GpusPerNode;

    /// <summary>The NIC a rank's one-sided reads go through: GPUs of a node split the NICs in equal, consecutive groups (as the original assigns RDMA devices).</summary>
    public int NicOf(int rank) => rank % GpusPerNode / Math.Max(1, GpusPerNode / Math.Max(1, NicsPerNode));

    /// <summary>Inbound bandwidth of a node from the network, all NICs together.</summary>
    public double NodeNetwork => NicsPerNode * NicBandwidth;

    /// <summary>Problems with the numbers, for the CLI to report; none when they make a cluster.</summary>
    public IEnumerable<string> Problems()
    {
        if (GpusPerNode < 1) yield return "GPUs per node must be at least 1";
        if (NicsPerNode < 1 || NicsPerNode > GpusPerNode || GpusPerNode % NicsPerNode != 0) yield return $"NICs per node ({NicsPerNode}) must divide the GPUs per node ({GpusPerNode})";
        if (FreeMemory <= 0 || FreeMemory > DeviceMemory) yield return "free device memory must be positive and at most the device memory";
        if (!(HostToDevice > 0 && DeviceCopy > 0 && NvLink > 0 && NicBandwidth > 0)) yield return "bandwidths must be positive";
    }
}
