using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Memory;

/// <summary>
/// A checkpoint held in host memory: its buffers and the native resources behind them, released
/// exactly once when the checkpoint is unregistered.
/// </summary>
public sealed class RegisteredCheckpoint
{
    private readonly List<NativeBuffer> _owned;
    private readonly List<NativeBuffer> _pooled;
    private readonly List<SafeTensorsFile> _mapped;
    private int _released;

    internal RegisteredCheckpoint(string name, IReadOnlyList<MemoryBuffer> buffers, List<NativeBuffer> owned,
        List<NativeBuffer> pooled, List<SafeTensorsFile> mapped, long copiedBytes, int poolReuses)
    {
        Name = name;
        Buffers = buffers;
        _owned = owned;
        _pooled = pooled;
        _mapped = mapped;
        CopiedBytes = copiedBytes;
        PoolReuses = poolReuses;
    }

    public string Name { get; }

    public IReadOnlyList<MemoryBuffer> Buffers { get; }

    public int TensorCount => Buffers.Sum(b => b.Metas.Count);

    /// <summary>Bytes of tensor data (without alignment padding).</summary>
    public long TensorBytes => Buffers.Sum(b => b.Metas.Sum(m => m.ByteLength));

    /// <summary>Host memory the buffers span, padding included.</summary>
    public long BufferBytes => Buffers.Sum(b => b.Size);

    /// <summary>Bytes copied during registration (in-place files copy nothing).</summary>
    public long CopiedBytes { get; }

    /// <summary>Buffers this registration got back from the pool instead of allocating.</summary>
    public int PoolReuses { get; }

    /// <summary>Files whose data section serves as a buffer in place.</summary>
    public IReadOnlyList<string> InPlaceFiles => _mapped.Select(f => f.Path).ToList();

    public bool IsReleased => _released != 0;

    internal void Release(HostMemoryPool pool)
    {
        if (Interlocked.Exchange(ref _released, 1) != 0)
        {
            return;
        }
        _owned.ForEach(b => b.Dispose());
        _pooled.ForEach(pool.Return);
        _mapped.ForEach(f => f.Dispose());
    }
}
