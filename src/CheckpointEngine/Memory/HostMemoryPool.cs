namespace CheckpointEngine.Memory;

/// <summary>
/// Keeps host buffers between checkpoints. RL loops register a checkpoint of the same layout every
/// step; handing back the previous step's buffers skips the first-touch page faults that cost about
/// ten times the copy itself. Idle buffers stay until <see cref="Trim"/> or disposal.
/// </summary>
public sealed class HostMemoryPool : IDisposable
{
    private readonly Lock _lock = new();
    private readonly List<NativeBuffer> _idle = [];
    private readonly HashSet<NativeBuffer> _leased = [];
    private long _leasedBytes;
    private bool _disposed;

    /// <summary>Buffers handed out again instead of being allocated.</summary>
    public long Reuses { get; private set; }

    /// <summary>Buffers allocated because no idle one fitted.</summary>
    public long Allocations { get; private set; }

    public long IdleBytes
    {
        get
        {
            lock (_lock)
            {
                return _idle.Sum(b => b.Capacity);
            }
        }
    }

    public long LeasedBytes
    {
        get
        {
            lock (_lock)
            {
                return _leasedBytes;
            }
        }
    }

    /// <summary>
    /// An idle buffer of at least <paramref name="size"/> bytes (the smallest that fits, and never
    /// more than twice the size so a small checkpoint does not pin a huge buffer), or a new one.
    /// </summary>
    public NativeBuffer Rent(long size) => Rent(size, shared: false, out _);

    /// <summary>As <see cref="Rent(long)"/>, in shared memory when <paramref name="shared"/> (see <see cref="NativeBuffer.AllocateShared"/>); <paramref name="reused"/> says whether an idle buffer was handed out.</summary>
    internal NativeBuffer Rent(long size, bool shared, out bool reused)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var best = -1;
            for (var i = 0; i < _idle.Count; i++)
            {
                var c = _idle[i].Capacity;
                if (c >= size && c <= Math.Max(2 * size, NativeBuffer.Alignment) && _idle[i].Segment is not null == shared && (best < 0 || c < _idle[best].Capacity))
                {
                    best = i;
                }
            }
            NativeBuffer buffer;
            if (best >= 0)
            {
                buffer = _idle[best];
                _idle.RemoveAt(best);
                Reuses++;
                reused = true;
            }
            else
            {
                buffer = shared ? NativeBuffer.AllocateShared(size) : NativeBuffer.Allocate(size);
                Allocations++;
                reused = false;
            }
            _leased.Add(buffer);
            _leasedBytes += buffer.Capacity;
            return buffer;
        }
    }

    /// <summary>
    /// Gives back a buffer rented from this pool. A buffer returned twice, or not rented here, is refused:
    /// taking it in would hand the same memory to two checkpoints.
    /// </summary>
    public void Return(NativeBuffer buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        lock (_lock)
        {
            if (!_leased.Remove(buffer))
            {
                throw new InvalidOperationException("buffer was not rented from this pool, or was already returned");
            }
            _leasedBytes -= buffer.Capacity;
            if (_disposed || buffer.IsDisposed)
            {
                buffer.Dispose();
            }
            else
            {
                _idle.Add(buffer);
            }
        }
    }

    /// <summary>Frees every idle buffer; leased ones are unaffected.</summary>
    public long Trim()
    {
        lock (_lock)
        {
            var freed = _idle.Sum(b => b.Capacity);
            _idle.ForEach(b => b.Dispose());
            _idle.Clear();
            return freed;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
        }
        Trim();
    }
}
