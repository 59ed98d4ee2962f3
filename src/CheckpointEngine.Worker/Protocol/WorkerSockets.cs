using System.Net.Sockets;
using System.Text.RegularExpressions;

namespace CheckpointEngine.Worker;

/// <summary>
/// Where the parameter server of a device listens for that device's worker. By default an abstract
/// Unix socket (written "@name": no file to clean up, private to the network namespace); with a
/// directory given, a socket file in it.
/// </summary>
public static partial class WorkerSockets
{
    /// <summary>The socket address for a device id, e.g. "@ckpt-engine-host-node1-0", or a file in <paramref name="directory"/>.</summary>
    public static string AddressFor(string deviceId, string? directory = null)
    {
        var name = "ckpt-engine-" + Unsafe().Replace(deviceId, "_");
        return directory is { Length: > 0 } ? Path.Combine(directory, name + ".sock") : "@" + name;
    }

    /// <summary>An endpoint for an address: "@name" is abstract, anything else a path.</summary>
    public static UnixDomainSocketEndPoint EndPoint(string address) =>
        address.StartsWith('@') ? new UnixDomainSocketEndPoint("\0" + address[1..]) : new UnixDomainSocketEndPoint(address);

    [GeneratedRegex("[^A-Za-z0-9._-]")]
    private static partial Regex Unsafe();
}
