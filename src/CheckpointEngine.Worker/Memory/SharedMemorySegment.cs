using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using CheckpointEngine.Interop;

namespace CheckpointEngine.Memory;

/// <summary>
/// A named shared-memory segment (a file on /dev/shm) mapped read-write. One process creates it
/// (owner-only, 0600) and others of the same user open it by name; the creator may unlink the name
/// once everyone has it mapped, so nothing is left behind if a process dies. The creator holds a
/// shared lock on its segment for as long as it lives, which is how <see cref="SweepAbandoned"/>
/// tells a crashed creator's segment from a live one, whatever PID namespace either runs in.
/// </summary>
public sealed unsafe class SharedMemorySegment : IDisposable
{
    public const string Directory = "/dev/shm";

    /// <summary>The prefix of every segment this project creates.</summary>
    public const string Prefix = "ckpt-engine-";

    /// <summary>A segment younger than this is never swept: its creator may not hold its lock yet.</summary>
    private static readonly TimeSpan SweepMinAge = TimeSpan.FromSeconds(30);

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly FileStream? _lock;
    private byte* _pointer;

    private SharedMemorySegment(string name, long size, MemoryMappedFile map, MemoryMappedViewAccessor view, FileStream? ownerLock)
    {
        Name = name;
        Size = size;
        IsOwner = ownerLock is not null;
        _map = map;
        _view = view;
        _lock = ownerLock;
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _pointer = p + view.PointerOffset;
    }

    public string Name { get; }

    public string Path => System.IO.Path.Combine(Directory, Name);

    public long Size { get; }

    public bool IsOwner { get; }

    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(Name);

    /// <summary>The start as an address, for code that cannot hold pointers (async methods).</summary>
    public nint Address => (nint)Pointer;

    /// <summary>A fresh name no other user can guess: <see cref="Prefix"/>, <paramref name="kind"/>, and 128 random bits.</summary>
    public static string NewName(string kind) => $"{Prefix}{kind}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16))}";

    /// <summary>Creates a new zero-filled segment, readable and writable by this user only; fails if the name exists.</summary>
    public static SharedMemorySegment Create(string name, long size) => Map(name, size, FileMode.CreateNew, owner: true);

    /// <summary>Maps an existing segment created by another process (its first <paramref name="size"/> bytes).</summary>
    public static SharedMemorySegment Open(string name, long size) => Map(name, size, FileMode.Open, owner: false);

    /// <summary>Maps the whole of an existing segment.</summary>
    public static SharedMemorySegment Open(string name) => Map(name, 0, FileMode.Open, owner: false);

    /// <summary>Maps the first <paramref name="size"/> bytes of an existing segment read-only (a reader that must not change the owner's bytes).</summary>
    public static SharedMemorySegment OpenReadOnly(string name, long size) => Map(name, size, FileMode.Open, owner: false, writable: false);

    /// <summary>Whether this mapping may be written.</summary>
    public bool IsWritable { get; private init; } = true;

    /// <summary>
    /// Faults every page of the mapping in now (one call that populates the page tables, Linux 5.14+; else a touch per page),
    /// so that the first copy into or out of it runs at memory speed instead of paying a fault per page.
    /// </summary>
    public void Prefault() => Populate(0, Size);

    /// <summary>As <see cref="Prefault()"/>, for the bytes [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>) only.</summary>
    public void Prefault(long offset, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Size - offset);
        Populate(offset, length);
    }

    /// <summary>
    /// Faults in the pages of the mapping that hold data already (written by the segment's owner), and leaves its holes alone: reading a
    /// hole of a shared-memory file allocates it. Returns the bytes faulted in (0 where the kernel cannot tell: not Linux).
    /// </summary>
    public long PrefaultResident()
    {
        if (!OperatingSystem.IsLinux())
        {
            return 0;
        }
        long page = Environment.SystemPageSize, pages = (Size + page - 1) / page, faulted = 0;
        var resident = (byte*)NativeMemory.Alloc((nuint)pages); // A byte per page: 256 KiB per GiB.
        try
        {
            if (Libc.mincore(Address, (nuint)Size, resident) != 0)
            {
                return 0;
            }
            for (long i = 0, j; i < pages; i = j)
            {
                j = i + 1;
                while (j < pages && (resident[j] & 1) == (resident[i] & 1))
                {
                    j++;
                }
                if ((resident[i] & 1) != 0)
                {
                    var length = Math.Min(j * page, Size) - i * page;
                    Populate(i * page, length);
                    faulted += length;
                }
            }
            return faulted;
        }
        finally
        {
            NativeMemory.Free(resident);
        }
    }

    private void Populate(long offset, long length)
    {
        var advice = IsWritable ? Libc.MADV_POPULATE_WRITE : Libc.MADV_POPULATE_READ;
        if (OperatingSystem.IsLinux() && Libc.madvise(Address + (nint)offset, (nuint)length, advice) == 0)
        {
            return;
        }
        var p = Pointer + offset;
        for (long i = 0; i < length; i += Environment.SystemPageSize)
        {
            if (IsWritable)
            {
                Volatile.Write(ref p[i], Volatile.Read(ref p[i])); // It may hold data already: write it back unchanged.
            }
            else
            {
                _ = Volatile.Read(ref p[i]);
            }
        }
    }

    private static SharedMemorySegment Map(string name, long size, FileMode mode, bool owner, bool writable = true)
    {
        if (name.Contains('/', StringComparison.Ordinal) || name.Length is 0 or > 200)
        {
            throw new ArgumentException($"'{name}' is not a valid segment name", nameof(name));
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(size, owner ? 1 : 0);
        var path = System.IO.Path.Combine(Directory, name);
        var options = new FileStreamOptions { Mode = mode, Access = writable ? FileAccess.ReadWrite : FileAccess.Read, Share = FileShare.ReadWrite | FileShare.Delete };
        if (owner && !OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        var file = new FileStream(path, options);
        try
        {
            if (owner && OperatingSystem.IsLinux() && Libc.flock((int)file.SafeFileHandle.DangerousGetHandle(), Libc.LOCK_SH | Libc.LOCK_NB) != 0)
            {
                throw new IOException($"cannot lock new shared memory segment {path} (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
            }
            if (size == 0)
            {
                size = file.Length > 0 ? file.Length : throw new IOException($"shared memory segment {path} is empty");
            }
            if (owner)
            {
                file.SetLength(size);
            }
            else if (file.Length < size)
            {
                throw new IOException($"shared memory segment {path} is {file.Length} bytes, expected {size}");
            }
            var access = writable ? MemoryMappedFileAccess.ReadWrite : MemoryMappedFileAccess.Read;
            // A reader maps the file as it is (capacity 0: its length), of which its view takes the first size bytes.
            var map = MemoryMappedFile.CreateFromFile(file, null, owner ? size : 0, access, HandleInheritability.None, leaveOpen: true);
            var view = map.CreateViewAccessor(0, size, access);
            if (!owner)
            {
                file.Dispose();
            }
            return new SharedMemorySegment(name, size, map, view, owner ? file : null) { IsWritable = writable };
        }
        catch
        {
            file.Dispose();
            if (owner)
            {
                File.Delete(path);
            }
            throw;
        }
    }

    /// <summary>
    /// Removes this project's segments whose creator is gone (killed before it could unlink them), so
    /// crashed processes do not pin memory on /dev/shm. A live creator holds a lock on its segment, so
    /// a segment that is locked, younger than 30 s, another user's, or not a regular file is left alone.
    /// (Unlike a check of the creator's pid, this holds across PID namespaces that share /dev/shm.)
    /// Returns how many were removed.
    /// </summary>
    public static int SweepAbandoned() => SweepAbandoned(SweepMinAge);

    /// <param name="minAge">Tests that just killed a process sweep its segments at once.</param>
    internal static int SweepAbandoned(TimeSpan minAge)
    {
        if (!OperatingSystem.IsLinux() || !System.IO.Directory.Exists(Directory))
        {
            return 0;
        }
        var removed = 0;
        foreach (var path in System.IO.Directory.EnumerateFiles(Directory, Prefix + "*"))
        {
            try
            {
                // Only this user's regular files (no FIFO can make the open below block), and none so young that its creator may not hold the lock yet.
                if (!Posix.TryStat(path, out var stat, out _, followLinks: false) || stat.Type != Posix.S_IFREG || stat.Uid != Posix.GetEffectiveUid()
                    || DateTime.UtcNow - DateTime.UnixEpoch.AddSeconds(stat.ModifiedSeconds) < minAge)
                {
                    continue;
                }
                using var file = new FileStream(path, new FileStreamOptions { Mode = FileMode.Open, Access = FileAccess.Read, Share = FileShare.ReadWrite | FileShare.Delete });
                if (Libc.flock((int)file.SafeFileHandle.DangerousGetHandle(), Libc.LOCK_EX | Libc.LOCK_NB) == 0)
                {
                    File.Delete(path);
                    removed++;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Gone already, or another user's: not ours to remove.
            }
        }
        return removed;
    }

    /// <summary>Removes the name; the memory lives until every process unmaps it.</summary>
    public void Unlink()
    {
        try
        {
            File.Delete(Path);
        }
        catch (IOException)
        {
            // Already gone.
        }
    }

    public void Dispose()
    {
        if (_pointer == null)
        {
            return;
        }
        _pointer = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
        if (IsOwner)
        {
            Unlink();
        }
        _lock?.Dispose();
    }
}
