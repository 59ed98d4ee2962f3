using System.IO.MemoryMappedFiles;

namespace CheckpointEngine.Memory;

/// <summary>
/// A named shared-memory segment (a file on /dev/shm) mapped read-write. One process creates it and
/// others open it by name; the creator may unlink the name once everyone has it mapped, so nothing
/// is left behind if a process dies.
/// </summary>
public sealed unsafe class SharedMemorySegment : IDisposable
{
    public const string Directory = "/dev/shm";

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _pointer;

    private SharedMemorySegment(string name, long size, MemoryMappedFile map, MemoryMappedViewAccessor view, bool owner)
    {
        Name = name;
        Size = size;
        IsOwner = owner;
        _map = map;
        _view = view;
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

    /// <summary>Creates a new zero-filled segment; fails if the name exists.</summary>
    public static SharedMemorySegment Create(string name, long size) => Map(name, size, FileMode.CreateNew, owner: true);

    /// <summary>Maps an existing segment created by another process (its first <paramref name="size"/> bytes).</summary>
    public static SharedMemorySegment Open(string name, long size) => Map(name, size, FileMode.Open, owner: false);

    /// <summary>Maps the whole of an existing segment.</summary>
    public static SharedMemorySegment Open(string name) => Map(name, 0, FileMode.Open, owner: false);

    private static SharedMemorySegment Map(string name, long size, FileMode mode, bool owner)
    {
        if (name.Contains('/', StringComparison.Ordinal) || name.Length is 0 or > 200)
        {
            throw new ArgumentException($"'{name}' is not a valid segment name", nameof(name));
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(size, owner ? 1 : 0);
        var path = System.IO.Path.Combine(Directory, name);
        using var file = new FileStream(path, mode, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        try
        {
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
            var map = MemoryMappedFile.CreateFromFile(file, null, size, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: true);
            var view = map.CreateViewAccessor(0, size, MemoryMappedFileAccess.ReadWrite);
            return new SharedMemorySegment(name, size, map, view, owner);
        }
        catch when (owner)
        {
            File.Delete(path);
            throw;
        }
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
    }
}
