namespace CheckpointEngine.Simulation.Clusters;

/// <summary>
/// Node types of the original's benchmark and a current one. Nominal figures from the vendors' data
/// sheets: PCIe Gen5 x16 host copies (~50 GB/s pinned in practice), NVLink per direction (half of the
/// bidirectional figure NVIDIA quotes), 400 Gb/s NICs (50 GB/s), one per GPU on these systems.
/// </summary>
public static class ClusterPresets
{
    private const long GiB = 1L << 30;
    private const double GB = 1e9;

    /// <summary>8×H800 SXM (80 GB): NVLink 400 GB/s bidirectional; free memory so that the original sizes 3.02 GiB buckets, as its table reports for GLM-4.5-Air.</summary>
    public static readonly ClusterSpec H800 = new("h800", "8×H800 80GB, NVLink 200 GB/s/dir, 8×400G RDMA", 8, 80 * GiB, 10 * GiB + 72 * (GiB / 1000),
        HostToDevice: 50 * GB, DeviceCopy: 1300 * GB, NvLink: 200 * GB, NicsPerNode: 8, NicBandwidth: 50 * GB);

    /// <summary>8×H20 (96 GB): NVLink 900 GB/s bidirectional; free memory so that the original sizes 5.39 GiB buckets, as its 16-GPU rows report.</summary>
    public static readonly ClusterSpec H20 = new("h20", "8×H20 96GB, NVLink 450 GB/s/dir, 8×400G RDMA", 8, 96 * GiB, 17 * GiB + 967 * (GiB / 1000),
        HostToDevice: 50 * GB, DeviceCopy: 1600 * GB, NvLink: 450 * GB, NicsPerNode: 8, NicBandwidth: 50 * GB);

    /// <summary>8×H200 (141 GB): NVLink 900 GB/s bidirectional, 8×400G ConnectX-7; ~10% of memory free beside vLLM.</summary>
    public static readonly ClusterSpec H200 = new("h200", "8×H200 141GB, NVLink 450 GB/s/dir, 8×400G RDMA", 8, 141 * GiB, 14 * GiB,
        HostToDevice: 50 * GB, DeviceCopy: 2000 * GB, NvLink: 450 * GB, NicsPerNode: 8, NicBandwidth: 50 * GB);

    public static IReadOnlyList<ClusterSpec> All { get; } = [H800, H20, H200];

    public static ClusterSpec? Find(string name) =>
        All.FirstOrDefault(c => string.Equals(c.Name, name.Trim().TrimStart('8', 'x', 'X', '×'), StringComparison.OrdinalIgnoreCase));
}
