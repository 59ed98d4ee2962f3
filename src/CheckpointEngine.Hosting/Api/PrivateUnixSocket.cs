using System.Net.Sockets;
using System.Security.Cryptography;

namespace CheckpointEngine.Hosting.Api;

/// <summary>
/// Binds a Unix socket that only its owner can connect to (mode 0600) with no window in which it is
/// reachable with looser permissions: bind() takes the process umask, so the socket is bound inside a
/// fresh owner-only directory, chmodded, and only then moved to its path.
/// </summary>
internal static class PrivateUnixSocket
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <exception cref="IOException">The path is in use by a live server, is a file with contents, or cannot be created.</exception>
    public static Socket Bind(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            throw new PlatformNotSupportedException("owner-only Unix sockets need a Unix file system");
        }
        path = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(path)!;
        if (!Directory.Exists(directory))
        {
            throw new IOException($"cannot serve on {path}: directory {directory} does not exist");
        }
        RemoveStale(path);
        var staging = Path.Combine(directory, $".ckpt-engine-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}");
        var bound = Path.Combine(staging, "s");
        Directory.CreateDirectory(staging, OwnerOnly | UnixFileMode.UserExecute);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(bound));
            File.SetUnixFileMode(bound, OwnerOnly);
            File.Move(bound, path, overwrite: false); // Fails if someone created the path meanwhile.
            return socket;
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            socket.Dispose();
            throw new IOException($"cannot serve on {path}: {e.Message}", e);
        }
        finally
        {
            try
            {
                Directory.Delete(staging, recursive: true);
            }
            catch (IOException)
            {
                // Left behind only if the filesystem refuses; it is empty and owner-only.
            }
        }
    }

    /// <summary>A socket file left by a server that died is removed; a live server or a file with contents is left alone.</summary>
    private static void RemoveStale(string path)
    {
        if (!File.Exists(path))
        {
            if (Directory.Exists(path))
            {
                throw new IOException($"cannot serve on {path}: it is a directory");
            }
            return;
        }
        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            try
            {
                probe.Connect(new UnixDomainSocketEndPoint(path));
                throw new IOException($"cannot serve on {path}: another server is listening there");
            }
            catch (SocketException)
            {
                // Nobody listens: a stale socket (or a non-socket file, checked next).
            }
        }
        if (new FileInfo(path).Length > 0)
        {
            throw new IOException($"cannot serve on {path}: it is a file with contents, not a socket");
        }
        File.Delete(path);
    }

    /// <summary>Removes the socket file on shutdown (connections already made are not affected).</summary>
    public static void Remove(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Someone else's now, or already gone.
        }
    }
}
