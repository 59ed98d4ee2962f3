using System.Runtime.InteropServices;

namespace CheckpointEngine.Interop;

/// <summary>The few libc calls the host backend needs that .NET does not expose (Linux).</summary>
internal static unsafe partial class Libc
{
    private const string LibName = "libc";

    public const int PROT_READ = 0x1;
    public const int PROT_WRITE = 0x2;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MADV_HUGEPAGE = 14;
    public const int MADV_POPULATE_READ = 22;
    public const int MADV_POPULATE_WRITE = 23;
    public const long TMPFS_MAGIC = 0x01021994;

    public static readonly nint MAP_FAILED = -1;

    [LibraryImport(LibName, SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport(LibName, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint dlopen(string path, int flags);

    [LibraryImport(LibName)]
    private static partial nint dlerror();

    [LibraryImport(LibName)]
    private static partial int dlclose(nint handle);

    /// <summary>The dynamic loader's reason why <paramref name="path"/> does not load (e.g. "No such file or directory").</summary>
    public static string LoadError(string path)
    {
        try
        {
            _ = dlerror(); // Binds dlerror now and clears any earlier error, so the text read below is this dlopen's.
            var handle = dlopen(path, 2); // RTLD_NOW
            if (handle != 0)
            {
                _ = dlclose(handle);
                return "loads now";
            }
            return Marshal.PtrToStringUTF8(dlerror()) ?? "cannot be loaded";
        }
        catch (EntryPointNotFoundException)
        {
            return "cannot be loaded"; // A C library without dlopen (glibc before 2.34 keeps it in libdl).
        }
    }

    [LibraryImport(LibName, SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);

    public const int LOCK_SH = 1;
    public const int LOCK_EX = 2;
    public const int LOCK_NB = 4;

    /// <summary>An advisory lock on an open file description: held until every descriptor of it is closed, so also until its process dies.</summary>
    [LibraryImport(LibName, SetLastError = true)]
    public static partial int flock(int fd, int operation);

    [LibraryImport(LibName, SetLastError = true)]
    public static partial int madvise(nint addr, nuint length, int advice);

    /// <summary>Per page of [addr, addr + length), bit 0 set when it is in memory (for a file mapping: in the file's page cache, mapped here or not).</summary>
    [LibraryImport(LibName, SetLastError = true)]
    public static partial int mincore(nint addr, nuint length, byte* vec);

    [LibraryImport(LibName, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int statfs(string path, StatFs* buf);

    /// <summary>Linux x86_64/aarch64 <c>struct statfs</c>; only <see cref="Type"/> is read.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct StatFs
    {
        public long Type;
        private fixed long _rest[15];
    }

    /// <summary>True when <paramref name="path"/> lies on a tmpfs (e.g. /dev/shm): its pages are already memory.</summary>
    public static bool IsOnTmpfs(string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        StatFs s;
        return statfs(path, &s) == 0 && s.Type == TMPFS_MAGIC;
    }
}
