using System.Runtime.InteropServices;

namespace CheckpointEngine.Interop;

/// <summary>
/// The libc file calls that opening a client-named path safely needs and .NET does not expose (Linux):
/// a non-blocking open, the file type, owner and age of a path or an open descriptor, realpath, our uid.
/// </summary>
internal static unsafe partial class Posix
{
    private const string LibName = "libc";

    public const int O_RDONLY = 0;
    public const int O_NOCTTY = 0x100;
    public const int O_NONBLOCK = 0x800;
    public const int O_CLOEXEC = 0x80000;
    public const int AT_FDCWD = -100;
    public const int AT_EMPTY_PATH = 0x1000;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const uint STATX_BASIC_STATS = 0x7ff;
    public const int ENOENT = 2;
    public const int EACCES = 13;
    public const int ENOTDIR = 20;
    public const int PATH_MAX = 4096;

    public const int S_IFMT = 0xF000;
    public const int S_IFSOCK = 0xC000;
    public const int S_IFLNK = 0xA000;
    public const int S_IFREG = 0x8000;
    public const int S_IFBLK = 0x6000;
    public const int S_IFDIR = 0x4000;
    public const int S_IFCHR = 0x2000;
    public const int S_IFIFO = 0x1000;

    /// <summary>Linux <c>struct statx</c>: one layout on every architecture (unlike <c>struct stat</c>); only what is read is named.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    public struct Statx
    {
        [FieldOffset(20)]
        public uint Uid;

        [FieldOffset(28)]
        public ushort Mode;

        [FieldOffset(40)]
        public ulong Size;

        /// <summary><c>stx_mtime.tv_sec</c>.</summary>
        [FieldOffset(112)]
        public long ModifiedSeconds;

        public readonly int Type => Mode & S_IFMT;
    }

    // Variadic in C; the mode argument is read only with O_CREAT, which is never passed.
    [LibraryImport(LibName, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport(LibName, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatxCall(int dirfd, string path, int flags, uint mask, Statx* buffer);

    [LibraryImport(LibName, EntryPoint = "realpath", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint RealPathCall(string path, byte* resolved);

    [LibraryImport(LibName, EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUid();

    /// <summary>stat(2) of a path, following symbolic links unless <paramref name="followLinks"/> is false (lstat); false with errno set when it fails.</summary>
    public static bool TryStat(string path, out Statx stat, out int errno, bool followLinks = true)
    {
        Statx s;
        var ok = StatxCall(AT_FDCWD, path, followLinks ? 0 : AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &s) == 0;
        errno = ok ? 0 : Marshal.GetLastPInvokeError();
        stat = s;
        return ok;
    }

    /// <summary>fstat(2) of an open descriptor.</summary>
    public static bool TryStat(int fd, out Statx stat, out int errno)
    {
        Statx s;
        var ok = StatxCall(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &s) == 0;
        errno = ok ? 0 : Marshal.GetLastPInvokeError();
        stat = s;
        return ok;
    }

    /// <summary>The canonical absolute path (every symbolic link, "." and ".." resolved), or null with errno set.</summary>
    public static string? RealPath(string path, out int errno)
    {
        var buffer = stackalloc byte[PATH_MAX];
        var result = RealPathCall(path, buffer);
        errno = result == 0 ? Marshal.GetLastPInvokeError() : 0;
        return result == 0 ? null : Marshal.PtrToStringUTF8((nint)buffer);
    }

    /// <summary>What a file of this type is, for messages: "a FIFO", "a directory", ...</summary>
    public static string Describe(int type) => type switch
    {
        S_IFREG => "a regular file",
        S_IFDIR => "a directory",
        S_IFIFO => "a FIFO",
        S_IFSOCK => "a socket",
        S_IFCHR => "a character device",
        S_IFBLK => "a block device",
        S_IFLNK => "a symbolic link",
        _ => "of an unknown type",
    };

    /// <summary>The C library's text for an errno ("Permission denied").</summary>
    public static string Error(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
