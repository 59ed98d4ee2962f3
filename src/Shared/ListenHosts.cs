using System.Net;
using System.Net.Sockets;

namespace CheckpointEngine.Hosting;

/// <summary>What the two HTTP servers (the API, the reference worker) listen on: a host name or literal, resolved once.</summary>
internal static class ListenHosts
{
    /// <summary>An IP literal (IPv6 in brackets too), "localhost", or a name resolved by DNS (IPv4 first).</summary>
    /// <exception cref="CheckpointEngineException">The name does not resolve, or has no addresses.</exception>
    public static IPAddress Resolve(string host)
    {
        var name = host.StartsWith('[') && host.EndsWith(']') ? host[1..^1] : host;
        if (IPAddress.TryParse(name, out var ip))
        {
            return ip;
        }
        if (name.Equals("localhost", StringComparison.OrdinalIgnoreCase))
        {
            return IPAddress.Loopback;
        }
        IPAddress[] found;
        try
        {
            found = Dns.GetHostAddresses(name);
        }
        catch (Exception e) when (e is SocketException or ArgumentException)
        {
            throw new CheckpointEngineException($"cannot resolve host '{host}': {e.Message}", e);
        }
        return found.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? found.FirstOrDefault()
            ?? throw new CheckpointEngineException($"host '{host}' has no addresses");
    }
}
