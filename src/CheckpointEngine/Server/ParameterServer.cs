using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Server;

/// <summary>
/// One rank's parameter server: it holds this rank's share of checkpoints in host memory, exchanges
/// metadata with the other ranks, and pushes checkpoints into the inference worker on its device
/// (see <see cref="UpdateAsync"/>). Every rank of the world runs one, colocated with a worker.
/// </summary>
public sealed partial class ParameterServer : IAsyncDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, GlobalMetas> _metas = new(StringComparer.Ordinal);
    private readonly WorkerLink _worker;
    private readonly SemaphoreSlim _updating = new(1, 1);
    private DeviceBuffer? _deviceBuffer;
    private BucketSizing? _sizing;

    public ParameterServer(World world, IDevice device, CheckpointRegistry? registry = null)
    {
        World = world;
        Device = device;
        Registry = registry ?? new CheckpointRegistry();
        _worker = new WorkerLink(device.Id);
    }

    public World World { get; }

    public IDevice Device { get; }

    public CheckpointRegistry Registry { get; }

    public int Rank => World.Rank;

    /// <summary>Where this rank's worker connects.</summary>
    public string WorkerAddress => _worker.Address;

    /// <summary>Registers this rank's share of a checkpoint (files, selected tensors, in-memory tensors) into host memory.</summary>
    public RegisteredCheckpoint RegisterCheckpoint(string name, IEnumerable<FileSelection> files, IEnumerable<NamedTensor>? tensors = null, RegisterOptions? options = null) =>
        Registry.RegisterCheckpoint(name, files, tensors, options);

    /// <summary>
    /// Frees the checkpoint's host memory and forgets its metas. The device buffers go too, unless
    /// another checkpoint is still registered or this one was pooled (an RL loop that registers the
    /// same layout again next step and should not pay for fresh device memory each time).
    /// </summary>
    public bool UnregisterCheckpoint(string name)
    {
        lock (_lock)
        {
            _metas.Remove(name);
        }
        var pooled = Registry.TryGet(name, out var checkpoint) && checkpoint.Buffers.Any(b => b.Kind == MemoryBufferKind.Pooled);
        var removed = Registry.UnregisterCheckpoint(name);
        if (!pooled && Registry.Checkpoints.Count == 0)
        {
            ReleaseDeviceMemory();
        }
        return removed;
    }

    /// <summary>
    /// All ranks exchange what they hold of <paramref name="name"/> (a rank may hold nothing). Every rank
    /// calls this; afterwards every rank knows every tensor's owner, offset and size.
    /// </summary>
    public async Task<GlobalMetas> GatherMetasAsync(string name, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        var local = new RankMetas(Rank, Device.Id, null,
            Registry.TryGet(name, out var checkpoint)
                ? checkpoint.Buffers.Select(b => new BufferMeta(b.Size, b.Address, b.Metas)).ToList()
                : []);
        var blobs = await World.Group.AllGatherAsync(GlobalMetas.RankToJson(local), timeout ?? TimeSpan.FromSeconds(300), ct).ConfigureAwait(false);
        var metas = new GlobalMetas(name, blobs.Select((b, r) => GlobalMetas.RankFromJson(b, $"metas from rank {r}")).ToList());
        metas.Validate($"checkpoint '{name}'");
        SetMetas(metas);
        return metas;
    }

    public GlobalMetas? GetMetas(string name)
    {
        lock (_lock)
        {
            return _metas.GetValueOrDefault(name);
        }
    }

    /// <summary>Uses metas gathered elsewhere (saved by a running fleet) for updates of <see cref="GlobalMetas.Checkpoint"/>.</summary>
    public void SetMetas(GlobalMetas metas)
    {
        lock (_lock)
        {
            _metas[metas.Checkpoint] = metas;
        }
    }

    /// <summary>The device buffer for a bucket layout: kept across updates while the layout is the same (first touches are expensive).</summary>
    private DeviceBuffer DeviceBufferFor(BucketSizing sizing)
    {
        if (_deviceBuffer is not null && _sizing == sizing)
        {
            return _deviceBuffer;
        }
        ReleaseDeviceMemory();
        _deviceBuffer = Device.AllocateShared(sizing.DeviceBytes);
        _sizing = sizing;
        if (_deviceBuffer is HostDeviceBuffer host)
        {
            World.Group.RegisterSharedMemory(host.Segment);
        }
        return _deviceBuffer;
    }

    /// <summary>Frees the device buffers now (the next update allocates them again).</summary>
    public void ReleaseDeviceMemory()
    {
        if (_deviceBuffer is HostDeviceBuffer host)
        {
            World.Group.UnregisterSharedMemory(host.Segment);
        }
        _deviceBuffer?.Dispose();
        _deviceBuffer = null;
        _sizing = null;
    }

    public ValueTask DisposeAsync()
    {
        ReleaseDeviceMemory();
        _worker.Dispose();
        Registry.Dispose();
        _updating.Dispose();
        return ValueTask.CompletedTask;
    }
}
