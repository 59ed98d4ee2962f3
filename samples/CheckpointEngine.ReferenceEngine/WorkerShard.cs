using CheckpointEngine.Memory;
using CheckpointEngine.Worker;

namespace CheckpointEngine.ReferenceEngine;

/// <summary>
/// One tensor-parallel shard of the reference worker: the weights it holds, each in its own native
/// buffer that later updates overwrite in place while the size stays the same. The owning worker
/// lets one update or one digest at a time touch a shard.
/// </summary>
internal sealed class WorkerShard(int rank, int size, string deviceId, bool shardByTp) : IDisposable
{
    private readonly Dictionary<string, Weight> _weights = new(StringComparer.Ordinal);

    /// <summary>The checkpoint's tensors as the last update brought them (whole dtype and shape): what the next update's wants are made from.</summary>
    private readonly Dictionary<string, (DType DType, long[] Shape)> _layout = new(StringComparer.Ordinal);

    /// <summary>Host memory a tensor in GPU memory is copied to before this shard takes its part; grown as needed, reused.</summary>
    private NativeBuffer? _fromDevice;

    public int Rank { get; } = rank;

    public string DeviceId { get; } = deviceId;

    public int TensorCount => _weights.Count;

    private long _bucketsLoaded;

    /// <summary>Buckets this shard has loaded since it started (what tests check to see a shard was left alone).</summary>
    public long BucketsLoaded => Interlocked.Read(ref _bucketsLoaded);

    /// <summary>
    /// Copies this shard's part of every tensor of a bucket into its weights: the whole view when the parameter
    /// server sent only the part this shard declared (it must be exactly that part), else the shard cuts it out.
    /// </summary>
    public unsafe void Load(IReadOnlyList<ReceivedTensor> tensors)
    {
        Interlocked.Increment(ref _bucketsLoaded);
        foreach (var view in tensors)
        {
            var full = view.Part?.FullShape ?? [.. view.Shape];
            _layout[view.Name] = (view.DType, full);
            var slice = TensorParallelSlice.For(view.Name, view.DType, full, view.DType.ByteLength(full), Rank, size, shardByTp);
            var weight = Slot(view.Name, slice.ByteLength);
            weight.DType = view.DType;
            weight.Shape = slice.Shape;
            weight.Slice = slice.ByteLength == view.DType.ByteLength(full) ? null : slice;
            if (view.Part is not null)
            {
                if (view.Length != slice.ByteLength || !view.Shape.SequenceEqual(slice.Shape))
                {
                    throw new InvalidOperationException(
                        $"tensor '{view.Name}' arrived as a part of shape {view.ShapeText}, but shard {Rank} keeps [{string.Join(", ", slice.Shape)}] of [{string.Join(", ", full)}]");
                }
                view.CopyTo(weight.Buffer.Pointer); // Exactly this shard's slice, packed as it keeps it.
            }
            else if (view.OnDevice)
            {
                // GPU memory: bring the whole tensor to the host, then take this shard's part.
                if (_fromDevice is null || _fromDevice.Capacity < view.Length)
                {
                    _fromDevice?.Dispose();
                    _fromDevice = NativeBuffer.Allocate(view.Length);
                }
                view.CopyTo(_fromDevice.Pointer);
                slice.CopyTo(_fromDevice.Pointer, weight.Buffer.Pointer);
            }
            else
            {
                slice.CopyTo(view.Pointer, weight.Buffer.Pointer);
            }
        }
    }

    /// <summary>
    /// What this shard keeps, declared to the parameter server: with <c>--shard-by-tp</c>, once an update has
    /// shown the checkpoint's layout, the slices of the split projections (everything else whole); else nothing
    /// (every byte). A real engine knows its model's shapes up front; this one learns them from the first update.
    /// </summary>
    public WorkerWants? Wants()
    {
        if (!shardByTp || size <= 1 || _layout.Count == 0)
        {
            return null;
        }
        var sliced = _layout.Select(kv => (kv.Key, Want: TensorParallelSlice.Want(kv.Key, kv.Value.DType, kv.Value.Shape, Rank, size, shardByTp)))
            .Where(t => t.Want.Kind == WantKind.Slices)
            .ToDictionary(t => t.Key, t => t.Want, StringComparer.Ordinal);
        return sliced.Count == 0 ? null : new WorkerWants(sliced);
    }

    /// <summary>After a failed update (perhaps a checkpoint of another layout): declare nothing until an update shows the layout again.</summary>
    public void ForgetLayout() => _layout.Clear();

    /// <summary>The dtype and shape a tensor is held with (its slice's shape), if held.</summary>
    public (DType DType, long[] Shape)? Describe(string name) => _weights.TryGetValue(name, out var w) ? (w.DType, w.Shape) : null;

    /// <summary>SHA-256 (hex) of the bytes this shard holds for each tensor, by name.</summary>
    public unsafe SortedDictionary<string, string> Digest()
    {
        var digest = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, w) in _weights)
        {
            digest[name] = TensorHash.Sha256Hex(w.Buffer.Pointer, w.Length);
        }
        return digest;
    }

    /// <summary>
    /// CRC-32 (hex) of the bytes this shard holds for each tensor, by name, and the names of those it holds only a
    /// tensor-parallel slice of (their CRC is of the slice, not of the tensor).
    /// </summary>
    public unsafe (SortedDictionary<string, string> Crc32, List<string> Sliced) Checksums()
    {
        var crc = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, w) in _weights)
        {
            crc[name] = TensorChecksum.Hex(TensorChecksum.Crc32Parallel(w.Buffer.Pointer, w.Length));
        }
        return (crc, [.. _weights.Where(w => w.Value.Slice is not null).Select(w => w.Key).Order(StringComparer.Ordinal)]);
    }

    /// <summary>
    /// CRC-32 of a tensor the shards hold in slices, reassembled in the tensor's own byte order (chunk i of shard 0, of
    /// shard 1, ..., then chunk i+1): what the whole tensor's checksum is if the slices are right. Null when a shard lacks it.
    /// </summary>
    public static unsafe uint? AssembledCrc32(IReadOnlyList<WorkerShard> shards, string name)
    {
        var parts = shards.Select(s => s._weights.GetValueOrDefault(name)).ToList();
        if (parts.Any(w => w?.Slice is null) || parts.Select(w => (w!.Slice!.Value.Chunks, w.Slice.Value.ChunkBytes)).Distinct().Count() != 1)
        {
            return null;
        }
        var (chunks, bytes) = (parts[0]!.Slice!.Value.Chunks, parts[0]!.Slice!.Value.ChunkBytes);
        var crc = new System.IO.Hashing.Crc32();
        for (long i = 0; i < chunks; i++)
        {
            foreach (var w in parts)
            {
                crc.Append(new ReadOnlySpan<byte>(w!.Buffer.Pointer + i * bytes, checked((int)bytes)));
            }
        }
        return crc.GetCurrentHashAsUInt32();
    }

    /// <summary>Allocates and touches this shard's weight for each tensor (its slice's bytes), as a model loaded before any update holds them.</summary>
    public unsafe void Allocate(IEnumerable<(string Name, DType DType, long[] Shape)> tensors)
    {
        foreach (var (name, dtype, shape) in tensors)
        {
            var slice = TensorParallelSlice.For(name, dtype, shape, dtype.ByteLength(shape), Rank, size, shardByTp);
            var weight = Slot(name, slice.ByteLength);
            for (long i = 0; i < weight.Length; i += NativeBuffer.Alignment)
            {
                weight.Buffer.Pointer[i] = 0;
            }
        }
    }

    /// <summary>The buffer for a tensor: the one it had when the size is unchanged, else a fresh one.</summary>
    private Weight Slot(string name, long length)
    {
        if (_weights.TryGetValue(name, out var weight))
        {
            if (weight.Length == length)
            {
                return weight;
            }
            weight.Buffer.Dispose();
            _weights.Remove(name);
        }
        weight = new Weight(NativeBuffer.Allocate(length), length);
        _weights[name] = weight;
        return weight;
    }

    public void Dispose()
    {
        foreach (var w in _weights.Values)
        {
            w.Buffer.Dispose();
        }
        _weights.Clear();
        _fromDevice?.Dispose();
        _fromDevice = null;
    }

    private sealed class Weight(NativeBuffer buffer, long length)
    {
        public NativeBuffer Buffer { get; } = buffer;

        public long Length { get; } = length;

        public DType DType { get; set; }

        public long[] Shape { get; set; } = [];

        /// <summary>The tensor-parallel slice held, or null when the tensor is held whole.</summary>
        public TensorParallelSlice? Slice { get; set; }
    }
}
