using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Interop;
using CheckpointEngine.Quantization;

namespace CheckpointEngine.Memory;

/// <summary>
/// Checkpoints registered into host memory by name. A registration either completes or leaves
/// nothing behind: on any error every buffer, mapping and file it took is released. With a
/// <see cref="Budget"/>, the host bytes of all registrations together stay within it: a registration is
/// sized from the file headers and refused before anything is allocated.
/// </summary>
public sealed class CheckpointRegistry : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, RegisteredCheckpoint> _checkpoints = new(StringComparer.Ordinal);
    private readonly HashSet<string> _pending = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _pendingBytes = new(StringComparer.Ordinal);
    private long? _budget;
    private bool _disposed;

    private readonly bool _ownsPool;

    /// <summary>A registry with its own pool, or sharing <paramref name="pool"/> (which it then does not dispose).</summary>
    public CheckpointRegistry(HostMemoryPool? pool = null)
    {
        _ownsPool = pool is null;
        Pool = pool ?? new HostMemoryPool();
    }

    public HostMemoryPool Pool { get; }

    /// <summary>
    /// Copied buffers go into owner-only shared-memory segments (pooled ones too) instead of private memory, so that peers and
    /// workers on this host can read them where they are (set by a parameter server on the host backend). Buffers mapped in place stay as they are.
    /// </summary>
    public bool SharedMemory { get; set; }

    /// <summary>
    /// Most host bytes the registered checkpoints may hold together (their buffers: copied and mapped in
    /// place), registrations under way included; null: no limit. Lowering it unregisters nothing.
    /// </summary>
    public long? Budget
    {
        get
        {
            lock (_lock)
            {
                return _budget;
            }
        }
        set
        {
            if (value is <= 0)
            {
                throw new ArgumentOutOfRangeException(nameof(value), value, "the registration budget must be positive");
            }
            lock (_lock)
            {
                _budget = value;
            }
        }
    }

    /// <summary>
    /// The budget of a rank process when none is configured: 90% of the machine's memory (or of the
    /// process's cgroup limit, whichever is smaller), split evenly over the ranks on this host.
    /// </summary>
    public static long DefaultBudget(int localRanks)
    {
        var memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes; // Physical memory, or the cgroup limit.
        return Math.Max(1, (long)(memory * 0.9) / Math.Max(1, localRanks));
    }

    /// <summary>Host bytes held by registered checkpoints and promised to registrations under way.</summary>
    public long BytesInUse
    {
        get
        {
            lock (_lock)
            {
                return UsedLocked();
            }
        }
    }

    public IReadOnlyList<RegisteredCheckpoint> Checkpoints
    {
        get
        {
            lock (_lock)
            {
                return [.. _checkpoints.Values.OrderBy(c => c.Name, StringComparer.Ordinal)];
            }
        }
    }

    public bool TryGet(string name, out RegisteredCheckpoint checkpoint)
    {
        lock (_lock)
        {
            return _checkpoints.TryGetValue(name, out checkpoint!);
        }
    }

    /// <summary>Registers tensors handed over in memory (the trainer path).</summary>
    public RegisteredCheckpoint RegisterCheckpoint(string name, IEnumerable<NamedTensor> namedTensors, RegisterOptions? options = null) =>
        RegisterCheckpoint(name, Array.Empty<FileSelection>(), namedTensors, options);

    /// <summary>Registers whole files, or every safetensors file of the given directories.</summary>
    public RegisteredCheckpoint RegisterCheckpoint(string name, IEnumerable<string> paths, IEnumerable<NamedTensor>? namedTensors = null, RegisterOptions? options = null)
    {
        var list = paths.ToList();
        var files = list.Count == 0 ? [] : Checkpoint.ResolveFiles(list).Select(f => new FileSelection(f));
        return RegisterCheckpoint(name, files, namedTensors, options);
    }

    /// <summary>
    /// Packs the selected tensors of files and the given in-memory tensors into host buffers (or maps
    /// tmpfs files in place) under <paramref name="name"/>.
    /// </summary>
    public unsafe RegisteredCheckpoint RegisterCheckpoint(string name, IEnumerable<FileSelection> files, IEnumerable<NamedTensor>? namedTensors = null, RegisterOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        options ??= new RegisterOptions();
        Reserve(name);
        var opened = new List<SafeTensorsFile>();
        var owned = new List<NativeBuffer>();
        var pooled = new List<NativeBuffer>();
        var mapped = new List<SafeTensorsFile>();
        try
        {
            var selections = files.ToList();
            var entries = CollectEntries(selections, namedTensors ?? [], opened, options.AllowedDirectories);
            if (options.Quantize is { } fp8)
            {
                entries = QuantizedEntries(entries, fp8);
            }
            var buffers = new List<MemoryBuffer>();
            var toCopy = entries;
            HashSet<SafeTensorsFile> inPlace = [];
            if (options.InPlace)
            {
                // A file with a tensor quantized on the way is copied: its bytes are not what gets registered.
                var converted = entries.Where(e => e.Fp8 is not null).Select(e => e.File).ToHashSet();
                inPlace = opened.Where((f, i) => selections[i].IsWholeFile && !converted.Contains(f) && CanMapInPlace(f)).ToHashSet();
                toCopy = entries.Where(e => e.File is null || !inPlace.Contains(e.File)).ToList();
            }
            var plan = BufferLayout.Pack(toCopy.Select(e => (e.Name, e.DType, e.Shape, e.ByteLength)), options.MaxBufferSize);
            ReserveBytes(name, plan.Sum(b => b.Size) + inPlace.Sum(f => f.DataLength)); // Before any allocation or mapping.
            foreach (var file in opened.Where(inPlace.Contains))
            {
                buffers.Add(MapInPlace(file));
                mapped.Add(file);
            }
            var copied = new List<MemoryBuffer>();
            var poolReuses = 0; // Counted per rent: the pool's own counter also moves with concurrent registrations.
            foreach (var b in plan)
            {
                NativeBuffer native;
                if (options.UsePool)
                {
                    native = Pool.Rent(b.Size, SharedMemory, out var reused);
                    pooled.Add(native);
                    poolReuses += reused ? 1 : 0;
                }
                else
                {
                    native = SharedMemory ? NativeBuffer.AllocateShared(b.Size) : NativeBuffer.Allocate(b.Size);
                    owned.Add(native);
                }
                copied.Add(new MemoryBuffer((nint)native.Pointer, b.Size, b.Metas, options.UsePool ? MemoryBufferKind.Pooled : MemoryBufferKind.Owned, native.Segment));
            }
            // Every tensor gets its CRC-32 here: copied ones in the copying pass, mapped ones in a hashing pass.
            buffers = [.. TensorCopier.Copy(copied, toCopy.ToDictionary(e => e.Name, StringComparer.Ordinal), options.CopyThreads),
                .. TensorCopier.Checksum(buffers, options.CopyThreads)];

            foreach (var f in opened.Where(f => !mapped.Contains(f)))
            {
                f.Dispose();
            }
            var checkpoint = new RegisteredCheckpoint(name, buffers, owned, pooled, mapped, toCopy.Sum(e => e.ByteLength), poolReuses);
            if (!TryCommit(name, checkpoint))
            {
                // Disposed meanwhile: nobody would ever release this checkpoint; the catch below does.
                throw new ObjectDisposedException(nameof(CheckpointRegistry), $"the registry was disposed while checkpoint '{name}' was being registered");
            }
            if (options.DeleteInPlaceFiles)
            {
                // Only once registered, so a failed registration never loses files. The mapping keeps the
                // pages alive; unlinking makes unregister free them instead of leaving them on tmpfs.
                mapped.ForEach(f => File.Delete(f.Path));
            }
            return checkpoint;
        }
        catch
        {
            owned.ForEach(b => b.Dispose());
            pooled.ForEach(Pool.Return);
            opened.ForEach(f => f.Dispose());
            Unreserve(name);
            throw;
        }
    }

    /// <summary>Releases a checkpoint's memory (pooled buffers go back to the pool). False when no such checkpoint.</summary>
    public bool UnregisterCheckpoint(string name)
    {
        RegisteredCheckpoint? checkpoint;
        lock (_lock)
        {
            if (!_checkpoints.Remove(name, out checkpoint))
            {
                return false;
            }
        }
        checkpoint.Release(Pool);
        return true;
    }

    private void Reserve(string name)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_checkpoints.ContainsKey(name) || !_pending.Add(name))
            {
                throw new InvalidOperationException($"checkpoint '{name}' is already registered; unregister it first");
            }
        }
    }

    private void Unreserve(string name)
    {
        lock (_lock)
        {
            _pending.Remove(name);
            _pendingBytes.Remove(name);
        }
    }

    /// <summary>Promises <paramref name="bytes"/> to the registration of <paramref name="name"/>, within the budget.</summary>
    private void ReserveBytes(string name, long bytes)
    {
        lock (_lock)
        {
            var used = UsedLocked();
            if (_budget is { } budget && bytes > budget - used)
            {
                throw new RegistrationBudgetException(name, used, bytes, budget);
            }
            _pendingBytes[name] = bytes;
        }
    }

    private long UsedLocked() => _checkpoints.Values.Sum(c => c.BufferBytes) + _pendingBytes.Values.Sum();

    private bool TryCommit(string name, RegisteredCheckpoint checkpoint)
    {
        lock (_lock)
        {
            _pending.Remove(name);
            _pendingBytes.Remove(name);
            if (_disposed)
            {
                return false;
            }
            _checkpoints.Add(name, checkpoint);
            return true;
        }
    }

    /// <summary>
    /// One tensor to place: from a file (positioned reads) or from caller memory. An F8_E4M3 weight made on
    /// the way carries its <see cref="Fp8"/> quantization and <see cref="SourceDType"/> (the source is still
    /// File/Tensor or Named); its scale tensor names the weight in <see cref="ScaleOf"/> and is filled with it.
    /// </summary>
    internal sealed record Entry(string Name, DType DType, ImmutableArray<long> Shape, long ByteLength, SafeTensorsFile? File, TensorInfo? Tensor, NamedTensor? Named)
    {
        public string Origin => File?.Path ?? "the in-memory tensors";

        public Fp8Quantization? Fp8 { get; init; }

        public DType SourceDType { get; init; }

        public string? ScaleOf { get; init; }
    }

    /// <summary>Each selected weight becomes its F8_E4M3 form and its scale tensor, exactly as <see cref="Fp8CheckpointWriter"/> writes them.</summary>
    private static List<Entry> QuantizedEntries(List<Entry> entries, Fp8Quantization fp8)
    {
        var names = entries.Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
        var result = new List<Entry>();
        foreach (var e in entries)
        {
            if (!fp8.Selects(e.Name, e.DType, e.Shape.AsSpan()))
            {
                result.Add(e);
                continue;
            }
            var scale = Fp8Quantization.ScaleName(e.Name);
            if (names.Contains(scale) || e.File?.Header.TryGetTensor(scale, out _) == true)
            {
                throw new CheckpointFormatException(e.Origin, $"is selected for FP8, but a tensor '{scale}' already exists", e.Name);
            }
            var scaleShape = fp8.ScaleShape(e.Shape[0], e.Shape[1]);
            result.Add(e with { DType = DType.F8_E4M3, ByteLength = e.Shape[0] * e.Shape[1], Fp8 = fp8, SourceDType = e.DType });
            result.Add(new Entry(scale, DType.F32, [.. scaleShape], DType.F32.ByteLength(scaleShape), e.File, e.Tensor, e.Named) { ScaleOf = e.Name });
        }
        return result;
    }

    private static List<Entry> CollectEntries(List<FileSelection> selections, IEnumerable<NamedTensor> namedTensors, List<SafeTensorsFile> opened, AllowedDirectories? allowed)
    {
        var byName = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var entries = new List<Entry>();
        void Add(Entry e)
        {
            if (!byName.TryAdd(e.Name, e))
            {
                throw new CheckpointFormatException(e.Origin, $"tensor is also in {byName[e.Name].Origin}", e.Name);
            }
            entries.Add(e);
        }

        var seenPaths = new HashSet<string>(StringComparer.Ordinal);
        foreach (var selection in selections)
        {
            if (!seenPaths.Add(Path.GetFullPath(selection.Path)))
            {
                throw new ArgumentException($"{selection.Path}: file is given twice", nameof(selections));
            }
            var file = SafeTensorsFile.Open(selection.Path, allowed);
            opened.Add(file);
            var tensors = selection.Tensors is null
                ? file.Tensors
                : selection.Tensors.Select(n => file.Header.TryGetTensor(n, out var t) ? t : throw new CheckpointFormatException(file.Path, "no such tensor in this file", n));
            foreach (var t in tensors)
            {
                Add(new Entry(t.Name, t.DType, t.Shape, t.ByteLength, file, t, null));
            }
        }
        foreach (var n in namedTensors)
        {
            Add(new Entry(n.Name, n.DType, n.Shape, n.ByteLength, null, null, n));
        }
        return entries;
    }

    /// <summary>A file can serve as its own buffer when its pages are memory (tmpfs) and every tensor is naturally aligned.</summary>
    private static bool CanMapInPlace(SafeTensorsFile file) =>
        Libc.IsOnTmpfs(file.Path) && file.Tensors.All(t => (file.DataStart + t.DataOffset) % t.DType.Alignment() == 0);

    private static unsafe MemoryBuffer MapInPlace(SafeTensorsFile file)
    {
        var metas = file.Tensors.Select(t => new ParameterMeta(t.Name, t.DType, t.Shape, t.DataOffset, t.ByteLength)).ToList();
        return new MemoryBuffer((nint)file.DataPointer, file.DataLength, metas, MemoryBufferKind.InPlace);
    }

    /// <summary>Unregisters everything and frees the pool.</summary>
    public void Dispose()
    {
        List<RegisteredCheckpoint> all;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            all = [.. _checkpoints.Values];
            _checkpoints.Clear();
        }
        all.ForEach(c => c.Release(Pool));
        if (_ownsPool)
        {
            Pool.Dispose();
        }
    }
}
