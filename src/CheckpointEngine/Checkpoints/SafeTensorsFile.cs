using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using Microsoft.Win32.SafeHandles;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// An open safetensors file: its validated header, zero-copy views of its tensors through a
/// read-only memory mapping (created on first use), and positioned reads that copy tensor bytes
/// straight into caller-owned memory without touching the mapping.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    private readonly SafeFileHandle _handle;
    private readonly Lock _mapLock = new();
    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private byte* _base;
    private int _disposed;

    private SafeTensorsFile(string path, SafeFileHandle handle, long length, SafeTensorsHeader header)
    {
        Path = path;
        _handle = handle;
        FileLength = length;
        Header = header;
    }

    public string Path { get; }

    public long FileLength { get; }

    public SafeTensorsHeader Header { get; }

    public IReadOnlyList<TensorInfo> Tensors => Header.Tensors;

    /// <summary>Offset of the data section from the start of the file.</summary>
    public long DataStart => Header.DataStart;

    public long DataLength => FileLength - Header.DataStart;

    /// <summary>
    /// Opens and validates a file. Malformed files raise <see cref="CheckpointFormatException"/>; only a
    /// regular file is opened (a FIFO or a device is refused, see <see cref="RegularFile"/>). Until the file
    /// is known to be safetensors, errors say nothing of its contents or size: a client may name any file.
    /// </summary>
    /// <param name="allowed">When given, the file must lie inside (<see cref="PathNotAllowedException"/> otherwise).</param>
    public static SafeTensorsFile Open(string path, AllowedDirectories? allowed = null)
    {
        var handle = RegularFile.TryOpenRead(path, allowed, out var problem) ?? throw new CheckpointFormatException(path, $"cannot open: the file {problem}");
        try
        {
            var length = RandomAccess.GetLength(handle);
            var header = ReadHeader(handle, length, path);
            return new SafeTensorsFile(path, handle, length, header);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static SafeTensorsHeader ReadHeader(SafeFileHandle handle, long length, string path)
    {
        if (length < SafeTensorsHeader.LengthPrefixSize)
        {
            throw new CheckpointFormatException(path,
                length == 0 ? "file is empty" : "not a safetensors file: shorter than the 8-byte header length");
        }
        Span<byte> prefix = stackalloc byte[SafeTensorsHeader.LengthPrefixSize];
        ReadExactly(handle, prefix, 0, path);
        var n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (n == 0 || n > SafeTensorsHeader.MaxHeaderLength || (long)n > length - SafeTensorsHeader.LengthPrefixSize)
        {
            // The number is the file's first 8 bytes: saying it (or which bound it breaks) would show them.
            throw new CheckpointFormatException(path,
                $"not a safetensors file (header length out of range): the first 8 bytes must give the JSON header's length, from 1 to {SafeTensorsHeader.MaxHeaderLength} and within the file (or the file is truncated)",
                offset: 0);
        }
        var json = new byte[n]; // The header is small (bounded above); tensor data never goes through the GC heap.
        ReadExactly(handle, json, SafeTensorsHeader.LengthPrefixSize, path);
        return SafeTensorsHeader.Parse(json, length - SafeTensorsHeader.LengthPrefixSize - (long)n, path);
    }

    public TensorInfo this[string name] =>
        Header.TryGetTensor(name, out var t) ? t : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    /// <summary>A zero-copy view of a tensor's bytes in the mapped file.</summary>
    public TensorView View(string name) => View(this[name]);

    public TensorView View(TensorInfo tensor) => new(tensor, DataPointer + tensor.DataOffset);

    /// <summary>Start of the data section in the read-only mapping; maps the file on first use.</summary>
    public byte* DataPointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            if (_base == null)
            {
                lock (_mapLock)
                {
                    if (_base == null)
                    {
                        Map();
                    }
                }
            }
            return _base + DataStart;
        }
    }

    private void Map()
    {
        _map = MemoryMappedFile.CreateFromFile(_handle, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
        _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
    }

    /// <summary>
    /// Copies <paramref name="length"/> bytes starting <paramref name="offset"/> bytes into a tensor's data
    /// to <paramref name="destination"/> with positioned reads (no mapping, no page faults on the source).
    /// </summary>
    public void ReadInto(TensorInfo tensor, long offset, long length, byte* destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(offset, tensor.ByteLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, tensor.ByteLength - offset); // Not offset + length: that can overflow.
        var position = DataStart + tensor.DataOffset + offset;
        while (length > 0)
        {
            var chunk = (int)Math.Min(length, 1 << 30);
            ReadExactly(_handle, new Span<byte>(destination, chunk), position, Path);
            destination += chunk;
            position += chunk;
            length -= chunk;
        }
    }

    private static void ReadExactly(SafeFileHandle handle, Span<byte> buffer, long position, string path)
    {
        while (!buffer.IsEmpty)
        {
            var n = RandomAccess.Read(handle, buffer, position);
            if (n == 0)
            {
                throw new CheckpointFormatException(path, "file ended early: it was truncated while being read", offset: position);
            }
            buffer = buffer[n..];
            position += n;
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
        _handle.Dispose();
    }
}
