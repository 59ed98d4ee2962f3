using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Tests.Support;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>PS_P2P_STORE_RDMA_DEVICES (NCCL_IB_HCA syntax) and each rank's nearest device, on fake sysfs trees.</summary>
public sealed class RdmaDevicesTests : IDisposable
{
    private static readonly string[] Available = ["mlx4_0", "mlx4_1", "mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "roce_0", "roce_1"];
    private readonly TempDirectory _sys = new();

    public void Dispose() => _sys.Dispose();

    private static string[] Parse(string? spec) => [.. RdmaDevices.Parse(spec, Available).Select(d => d.ToString())];

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("   \t\n  ")]
    [InlineData("^")]
    [InlineData("^=")]
    public void Parse_BlankOrEmptyExclusion_IsEveryDevice(string? spec) => Assert.Equal(Available, Parse(spec));

    [Theory]
    [InlineData("mlx5", "mlx5_0,mlx5_1,mlx5_2,mlx5_3")] // Prefixes by default.
    [InlineData("mlx5_0", "mlx5_0")]
    [InlineData("=mlx5_0,mlx5_1", "mlx5_0,mlx5_1")] // Exact names.
    [InlineData("=mlx5", "")]
    [InlineData("=", "")]
    [InlineData("==", "")]
    [InlineData("^mlx5", "mlx4_0,mlx4_1,roce_0,roce_1")]
    [InlineData("^=mlx5_3,mlx4_1", "mlx4_0,mlx5_0,mlx5_1,mlx5_2,roce_0,roce_1")]
    [InlineData("^mlx5_100", "mlx4_0,mlx4_1,mlx5_0,mlx5_1,mlx5_2,mlx5_3,roce_0,roce_1")]
    [InlineData("mlx5_100", "")] // Matches nothing: skipped, not an error (nodes of a cluster differ).
    [InlineData("None", "")]
    [InlineData("mlx5_0:1,mlx5_1:2", "mlx5_0:1,mlx5_1:2")]
    [InlineData("mlx5_0:1,mlx5_1", "mlx5_0:1,mlx5_1")]
    [InlineData(" mlx5_0 , mlx5_1 ", "mlx5_0,mlx5_1")]
    [InlineData("mlx5_0,,mlx5_1", "mlx5_0,mlx5_1")]
    [InlineData("mlx5_1,mlx5_0", "mlx5_0,mlx5_1")] // In the machine's order.
    public void Parse_NcclIbHcaSyntax(string spec, string expected) =>
        Assert.Equal(expected.Split(',', StringSplitOptions.RemoveEmptyEntries), Parse(spec));

    [Fact]
    public void Parse_AtMost32Devices()
    {
        var many = Enumerable.Range(0, 50).Select(i => $"dev_{i:00}").ToList();
        Assert.Equal(many.Take(32), RdmaDevices.Parse("", many).Select(d => d.Name));
    }

    [Theory]
    [InlineData("mlx5_0:x")]
    [InlineData("mlx5_0:0")]
    [InlineData("mlx5_0:")]
    public void Parse_BadPort_NamesTheEntryAndTheVariable(string spec)
    {
        var e = Assert.Throws<CheckpointEngineException>(() => RdmaDevices.Parse(spec, Available));
        Assert.Contains(RdmaDevices.Variable, e.Message);
        Assert.Contains($"'{spec}'", e.Message);
    }

    /// <summary>
    /// Two sockets (NUMA 0, 1), each with a PCIe switch holding two GPUs and one NIC; a third NIC on
    /// socket 1 outside the switch. Links as the kernel makes them (class/infiniband/X/device, bus/pci/devices/BDF).
    /// </summary>
    private void TwoSocketHost()
    {
        Device("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0", numa: 0, gpu: "0000:02:00.0");
        Device("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0", numa: 0, gpu: "0000:02:01.0");
        Device("pci0000:00/0000:00:01.0/0000:01:00.0/0000:03:00.0", numa: 0, nic: "mlx5_0", activePort: 1);
        Device("pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:00.0", numa: 1, gpu: "0000:82:00.0");
        Device("pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:01.0", numa: 1, gpu: "0000:82:01.0");
        Device("pci0000:80/0000:80:01.0/0000:81:00.0/0000:83:00.0", numa: 1, nic: "mlx5_1", activePort: 2);
        Device("pci0000:80/0000:80:02.0/0000:84:00.0", numa: 1, nic: "mlx5_2", activePort: 1);
    }

    private void Device(string path, int numa, string? gpu = null, string? nic = null, int activePort = 1)
    {
        var dir = Path.Combine(_sys.Path, "devices", path);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "numa_node"), $"{numa}\n");
        if (gpu is not null)
        {
            Directory.CreateDirectory(Path.Combine(_sys.Path, "bus", "pci", "devices"));
            File.CreateSymbolicLink(Path.Combine(_sys.Path, "bus", "pci", "devices", gpu), Path.Combine("..", "..", "..", "devices", path));
        }
        if (nic is not null)
        {
            var ib = Path.Combine(_sys.Path, "class", "infiniband", nic);
            Directory.CreateDirectory(ib);
            File.CreateSymbolicLink(Path.Combine(ib, "device"), Path.Combine("..", "..", "..", "devices", path));
            foreach (var port in new[] { 1, 2 })
            {
                Directory.CreateDirectory(Path.Combine(ib, "ports", $"{port}"));
                File.WriteAllText(Path.Combine(ib, "ports", $"{port}", "state"), port == activePort ? "4: ACTIVE\n" : "1: DOWN\n");
            }
        }
    }

    [Fact]
    public void Available_ListsTheFakeTree_AndNothingWithoutOne()
    {
        TwoSocketHost();
        Assert.Equal(["mlx5_0", "mlx5_1", "mlx5_2"], RdmaDevices.Available(_sys.Path));
        Assert.Empty(RdmaDevices.Available(Path.Combine(_sys.Path, "nowhere")));
    }

    [Theory]
    [InlineData("0000:02:00.0", "mlx5_0:1")] // The NIC under the GPU's own PCIe switch.
    [InlineData("0000:02:01.0", "mlx5_0:1")]
    [InlineData("0000:82:00.0", "mlx5_1:2")] // Its active port, not port 1.
    [InlineData("0000:82:01.0", "mlx5_1:2")]
    public void ForRank_TakesTheNicUnderTheGpusSwitch(string gpu, string expected)
    {
        TwoSocketHost();
        var all = RdmaDevices.Parse(null, RdmaDevices.Available(_sys.Path));
        Assert.Equal(expected, Assert.Single(RdmaDevices.ForRank(all, 0, 4, gpu, _sys.Path)).ToString());
    }

    [Fact]
    public void ForRank_ExcludedNearest_FallsBackToTheSameNumaNode()
    {
        TwoSocketHost();
        var rest = RdmaDevices.Parse("^=mlx5_1", RdmaDevices.Available(_sys.Path));
        // Without mlx5_1, a socket-1 GPU shares its root complex and NUMA node with mlx5_2 only.
        Assert.Equal("mlx5_2:1", Assert.Single(RdmaDevices.ForRank(rest, 0, 4, "0000:82:00.0", _sys.Path)).ToString());
    }

    [Fact]
    public void ForRank_WithoutTopology_SharesDevicesInContiguousGroups_OrSplitsThem()
    {
        TwoSocketHost();
        var two = RdmaDevices.Parse("=mlx5_0,mlx5_1", RdmaDevices.Available(_sys.Path));
        // Eight ranks on two NICs: 0–3 take the first, 4–7 the second (the original's rule).
        Assert.Equal(["mlx5_0:1", "mlx5_0:1", "mlx5_0:1", "mlx5_0:1", "mlx5_1:2", "mlx5_1:2", "mlx5_1:2", "mlx5_1:2"],
            Enumerable.Range(0, 8).Select(r => Assert.Single(RdmaDevices.ForRank(two, r, 8, sysfs: _sys.Path)).ToString()));
        // One rank, three NICs: it takes them all; UCX's NET_DEVICES lists them with their ports.
        var all = RdmaDevices.Parse(null, RdmaDevices.Available(_sys.Path));
        Assert.Equal("mlx5_0:1,mlx5_1:2,mlx5_2:1", RdmaDevices.ToUcxNetDevices(RdmaDevices.ForRank(all, 0, 1, sysfs: _sys.Path)));
    }

    [Fact]
    public void ForRank_NoDevices_IsNone() => Assert.Empty(RdmaDevices.ForRank([], 0, 8));

    [Fact]
    public void RankConfig_ReadsTheTransportAndTheDeviceList_NamingABadTransport()
    {
        var config = RankConfig.FromEnvironment(new Dictionary<string, string> { [P2PTransports.Variable] = "ucx", [RdmaDevices.NcclVariable] = "^mlx5_0" });
        Assert.Equal(P2PTransport.Ucx, config.P2PTransport);
        Assert.Equal(("^mlx5_0", RdmaDevices.NcclVariable), config.RdmaDevices);
        config = RankConfig.FromEnvironment(new Dictionary<string, string> { [RdmaDevices.Variable] = "mlx5_1", [RdmaDevices.NcclVariable] = "^mlx5_0" });
        Assert.Equal(("mlx5_1", RdmaDevices.Variable), config.RdmaDevices); // The P2P store's own variable wins.
        Assert.Equal(P2PTransport.Auto, config.P2PTransport);
        var e = Assert.Throws<CheckpointEngineException>(() => RankConfig.FromEnvironment(new Dictionary<string, string> { [P2PTransports.Variable] = "rdma" }));
        Assert.Equal($"{P2PTransports.Variable}=rdma is not a P2P transport: use tcp, ucx or auto", e.Message);
    }
}
