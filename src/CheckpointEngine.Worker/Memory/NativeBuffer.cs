using System.Runtime.InteropServices;
using CheckpointEngine.Interop;

namespace CheckpointEngine.Memory;

/// <summary>
/// Page-aligned host memory outside the GC heap. On Linux it is an anonymous mapping advised for
/// transparent huge pages (first-touch faults dominate a fresh buffer's cost); elsewhere an aligned
/// allocation. The CUDA backend can page-lock it in place. <see cref="AllocateShared"/> makes one in an owner-only
/// shared-memory segment instead, which other processes of this user on the host may map by name.
/// </summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    public const int Alignment = 4096;

    private nint _pointer;
    private readonly bool _mapped;

    private NativeBuffer(nint pointer, long capacity, bool mapped, SharedMemorySegment? segment = null)
    {
        _pointer = pointer;
        Capacity = capacity;
        _mapped = mapped;
        Segment = segment;
    }

    /// <summary>The shared-memory segment holding the buffer (see <see cref="AllocateShared"/>), or null for private memory.</summary>
    public SharedMemorySegment? Segment { get; }

    public byte* Pointer => _pointer != 0 ? (byte*)_pointer : throw new ObjectDisposedException(nameof(NativeBuffer));

    /// <summary>The start as an address, for code that cannot hold pointers (async methods).</summary>
    public nint Address => (nint)Pointer;

    /// <summary>Usable bytes (the requested size rounded up to whole pages).</summary>
    public long Capacity { get; }

    public bool IsDisposed => _pointer == 0;

    public static NativeBuffer Allocate(long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        var capacity = Math.Max(Alignment, (size + Alignment - 1) / Alignment * Alignment);
        if (OperatingSystem.IsLinux())
        {
            var p = Libc.mmap(0, (nuint)capacity, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS, -1, 0);
            if (p == Libc.MAP_FAILED)
            {
                throw new CheckpointEngineException($"cannot map {capacity} bytes of host memory (errno {Marshal.GetLastPInvokeError()})");
            }
            _ = Libc.madvise(p, (nuint)capacity, Libc.MADV_HUGEPAGE); // Advice only: fine if refused.
            return new NativeBuffer(p, capacity, mapped: true);
        }
        return new NativeBuffer((nint)NativeMemory.AlignedAlloc((nuint)capacity, Alignment), capacity, mapped: false);
    }

    /// <summary>A buffer in a fresh shared-memory segment (0600, a name no other user can guess), freed and unlinked on dispose.</summary>
    public static NativeBuffer AllocateShared(long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        var capacity = Math.Max(Alignment, (size + Alignment - 1) / Alignment * Alignment);
        var segment = SharedMemorySegment.Create(SharedMemorySegment.NewName("buf"), capacity);
        return new NativeBuffer(segment.Address, capacity, mapped: false, segment);
    }

    public Span<byte> AsSpan(long offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(offset, Capacity - length);
        return new Span<byte>(Pointer + offset, length);
    }

    public void Dispose()
    {
        var p = Interlocked.Exchange(ref _pointer, 0);
        if (p == 0)
        {
            return;
        }
        if (Segment is not null)
        {
            Segment.Dispose();
        }
        else if (_mapped)
        {
            _ = Libc.munmap(p, (nuint)Capacity);
        }
        else
        {
            NativeMemory.AlignedFree((void*)p);
        }
    }
}
