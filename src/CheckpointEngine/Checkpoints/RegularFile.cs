using CheckpointEngine.Interop;
using Microsoft.Win32.SafeHandles;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// Opens a file that someone else named (an API client) for reading, refusing anything but a regular
/// file without side effects: the type is checked on the path before opening (so a device is never
/// opened) and again on the opened descriptor (so a swap in between is caught); the open does not block
/// (a FIFO would wait forever for a writer).
/// </summary>
public static class RegularFile
{
    /// <summary>
    /// An open descriptor of a regular file, or null with <paramref name="problem"/> saying why not, in words
    /// that follow the path: "does not exist", "is not a regular file (a FIFO)", ...
    /// </summary>
    /// <param name="allowed">When given, <paramref name="path"/> must lie inside (see <see cref="AllowedDirectories"/>).</param>
    /// <exception cref="PathNotAllowedException">The path, as written, resolved or opened, lies outside <paramref name="allowed"/>.</exception>
    public static SafeFileHandle? TryOpenRead(string path, AllowedDirectories? allowed, out string? problem)
    {
        ArgumentNullException.ThrowIfNull(path);
        var target = path;
        if (allowed is not null)
        {
            target = allowed.Resolve(path, out problem)!;
            if (problem is not null)
            {
                return null;
            }
        }
        if (!OperatingSystem.IsLinux())
        {
            return PortableOpen(target, out problem);
        }
        if (!Posix.TryStat(target, out var stat, out var errno))
        {
            problem = Problem(errno, allowed);
            return null;
        }
        if (stat.Type != Posix.S_IFREG)
        {
            problem = NotRegular(stat.Type);
            return null;
        }
        var fd = Posix.Open(target, Posix.O_RDONLY | Posix.O_NONBLOCK | Posix.O_NOCTTY | Posix.O_CLOEXEC);
        if (fd < 0)
        {
            problem = Problem(System.Runtime.InteropServices.Marshal.GetLastPInvokeError(), allowed);
            return null;
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            // O_NONBLOCK has no effect on regular files, so it stays set.
            if (!Posix.TryStat(fd, out stat, out errno) || stat.Type != Posix.S_IFREG)
            {
                problem = errno != 0 ? Problem(errno, allowed) : NotRegular(stat.Type);
                handle.Dispose();
                return null;
            }
            if (allowed is not null && !allowed.Contains(OpenedPath(fd)))
            {
                throw new PathNotAllowedException(path, allowed);
            }
            problem = null;
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Reads a small regular file whole (a config.json, an index).</summary>
    /// <exception cref="CheckpointFormatException">It cannot be opened, is not a regular file, or is larger than <paramref name="maxBytes"/>.</exception>
    /// <exception cref="PathNotAllowedException">It lies outside <paramref name="allowed"/>.</exception>
    public static byte[] ReadAllBytes(string path, long maxBytes, AllowedDirectories? allowed = null)
    {
        using var handle = TryOpenRead(path, allowed, out var problem) ?? throw new CheckpointFormatException(path, $"cannot open: the file {problem}");
        var length = RandomAccess.GetLength(handle);
        if (length > maxBytes)
        {
            throw new CheckpointFormatException(path, $"is larger than the {maxBytes}-byte limit for this kind of file");
        }
        var bytes = new byte[length];
        var done = 0;
        while (done < bytes.Length)
        {
            var n = RandomAccess.Read(handle, bytes.AsSpan(done), done);
            if (n == 0)
            {
                throw new CheckpointFormatException(path, "file ended early: it was truncated while being read", offset: done);
            }
            done += n;
        }
        return bytes;
    }

    private static string NotRegular(int type) => type == Posix.S_IFDIR ? "is a directory" : $"is not a regular file ({Posix.Describe(type)})";

    private static string Problem(int errno, AllowedDirectories? allowed) => allowed is not null
        ? "does not exist or cannot be read"
        : errno switch
        {
            Posix.ENOENT or Posix.ENOTDIR => "does not exist",
            Posix.EACCES => "cannot be read (permission denied)",
            _ => $"cannot be opened ({Posix.Error(errno)})",
        };

    /// <summary>Where the descriptor really points: the kernel's answer, not the path we asked for.</summary>
    private static string OpenedPath(int fd) =>
        new FileInfo($"/proc/self/fd/{fd}").LinkTarget ?? throw new CheckpointEngineException($"cannot tell which file descriptor {fd} refers to");

    /// <summary>Where there is no statx (not Linux): the runtime's checks, which refuse directories but not FIFOs.</summary>
    internal static SafeFileHandle? PortableOpen(string path, out string? problem)
    {
        try
        {
            problem = null;
            return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            problem = e is FileNotFoundException or DirectoryNotFoundException ? "does not exist" : $"cannot be opened ({e.Message})";
            return null;
        }
    }
}
