using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;

namespace CheckpointEngine.Tests.Support;

/// <summary>Loopback ports for tests: picked by the kernel, so two test runs on one machine never collide.</summary>
public static class TestPorts
{
    /// <summary>A port nothing listens on now (bound and released at once).</summary>
    public static int Free()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    /// <summary>An IPv4 address of this machine that is not loopback (what other hosts would reach), or null when it has none.</summary>
    public static IPAddress? NonLoopbackAddress() => NetworkInterface.GetAllNetworkInterfaces()
        .Where(n => n.OperationalStatus == OperationalStatus.Up)
        .SelectMany(n => n.GetIPProperties().UnicastAddresses)
        .Select(a => a.Address)
        .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
}
