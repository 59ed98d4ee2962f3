using System.Net;
using CheckpointEngine.Interop;

namespace CheckpointEngine.Hosting.Api;

/// <summary>
/// Which inference engines an update may call. The trigger posts this rank's worker sockets to the engine
/// and waits for its reply, so a client must not point it anywhere it likes: by default an
/// <c>update_url</c> names a loopback host (127.0.0.0/8, ::1, localhost) and a <c>uds</c> a socket that
/// this process's user owns, served by an engine of the same user; anything else must be allow-listed.
/// </summary>
internal sealed class EngineAllowList
{
    public const string Any = "*";

    private readonly string[] _hosts;
    private readonly HashSet<string> _sockets;

    public EngineAllowList(IEnumerable<string> hosts, IEnumerable<string> sockets)
    {
        _hosts = [.. hosts.Select(Normalize)];
        _sockets = sockets.Select(Path.GetFullPath).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>True for a literal loopback address (an IPv4-mapped one too) and for "localhost"; a name that merely resolves to loopback is not (it could resolve elsewhere later).</summary>
    public static bool IsLoopback(string host)
    {
        host = Normalize(host);
        if (host == "localhost")
        {
            return true;
        }
        return IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip);
    }

    /// <summary>Whether an update may post to <paramref name="url"/>'s host.</summary>
    public bool AllowsHost(Uri url)
    {
        var host = Normalize(url.Host);
        return IsLoopback(host) || _hosts.Any(h => h == Any || SameHost(h, host));
    }

    /// <summary>Whether <paramref name="path"/> was allow-listed: then neither its owner nor the engine's user is checked.</summary>
    public bool TrustsSocket(string path) => _sockets.Contains(Path.GetFullPath(path));

    /// <summary>
    /// Null when the socket at <paramref name="path"/> may be used without an allow-list entry (a socket owned
    /// by <paramref name="uid"/>), else what is wrong with it, in words that follow the path.
    /// </summary>
    public static string? CheckSocket(string path, uint uid)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }
        if (!Posix.TryStat(path, out var stat, out var errno))
        {
            return errno is Posix.ENOENT or Posix.ENOTDIR ? "does not exist" : $"cannot be checked ({Posix.Error(errno)})";
        }
        if (stat.Type != Posix.S_IFSOCK)
        {
            return $"is not a Unix socket ({Posix.Describe(stat.Type)})";
        }
        return stat.Uid == uid ? null : $"is owned by uid {stat.Uid}, not by this server's user (uid {uid})";
    }

    private static bool SameHost(string allowed, string host) =>
        allowed == host || (IPAddress.TryParse(allowed, out var a) && IPAddress.TryParse(host, out var b) && a.Equals(b));

    /// <summary>Lower case, without IPv6 brackets or a trailing dot.</summary>
    private static string Normalize(string host) => host.Trim().TrimStart('[').TrimEnd(']').TrimEnd('.').ToLowerInvariant();
}
