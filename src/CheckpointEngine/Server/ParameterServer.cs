using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Worker;

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
    private readonly IP2PStore _p2p;
    private readonly OperationGate _gate;
    private readonly CancellationTokenSource _closing = new();
    private int _disposed;
    private volatile bool _updating;
    private DeviceBuffer? _deviceBuffer;
    private NativeBuffer? _staging;
    private volatile UpdateProgress? _progress;

    /// <summary>The last worker part plan: the declaration's digest, the bucket layout it was made for, and the parts (updates run one at a time).</summary>
    private (string Wants, List<H2DBucket> Buckets, List<BucketPart>? Parts, List<IReadOnlyList<(long Offset, long Length)>?>? Wanted, List<long[]> ClassBytes)? _partsPlan;

    /// <summary>The last scatter plan: every class's part of the buckets this member stages (see <c>ClassPartsFor</c>).</summary>
    private (string Key, List<H2DBucket> Buckets, List<BucketPart?[]?> Parts)? _classPartsPlan;

    /// <summary>How many times a worker part plan was made (not reused); for tests.</summary>
    internal int PartPlans { get; private set; }

    /// <summary>The declarations of the last update's classes, by digest: later updates exchange only digests while they stay the same.</summary>
    private Dictionary<string, WorkerWants> _knownWants = new(StringComparer.Ordinal);

    /// <summary>The world group's relay groups for shard-aware updates across hosts, kept while hosts and classes stay the same.</summary>
    private RelayGroups? _relay;

    /// <summary>Whether this rank's last broadcast update had declared parts on GPUs across hosts (see <see cref="UpdateOptions.BucketsInFlight"/>).</summary>
    private bool _declaredAcrossHosts;
    private BucketSizing? _sizing;

    /// <summary>The device buffers' pages are in (faulted ahead, or touched by a staged update).</summary>
    private bool _deviceFaulted;

    /// <summary>Bytes of device buffers allocated and faulted in ahead of the next update (0: none, or allocated but left untouched); for tests.</summary>
    internal long PreparedDeviceBytes => _deviceFaulted ? _deviceBuffer?.Size ?? 0 : 0;

    /// <summary>Bytes of device buffers allocated now; for tests.</summary>
    internal long DeviceBytes => _deviceBuffer?.Size ?? 0;

    /// <summary>Other ranks' registered segments mapped here (read-only) for gathers of direct updates, by name; kept while updates name them.</summary>
    private readonly Dictionary<string, SharedMemorySegment> _peerBuffers = new(StringComparer.Ordinal);

    /// <param name="p2p">Serves this rank's buffers to P2P readers and reads others'; default: the rank's configured transport (<see cref="P2PTransports.Create(RankConfig, System.Net.IPAddress)"/>).</param>
    /// <param name="group">The communicator that broadcasts device memory (NCCL for a GPU); default: the world's built-in group.</param>
    public ParameterServer(World world, IDevice device, CheckpointRegistry? registry = null, IP2PStore? p2p = null, ICommunicator? group = null)
    {
        World = world;
        Device = device;
        Group = group ?? world.Group;
        Registry = registry ?? new CheckpointRegistry();
        // On the host backend, registered buffers are shared-memory segments: workers on this host load straight out of them.
        Registry.SharedMemory |= device.HostAccessible;
        _gate = new OperationGate(world.Rank);
        _worker = new WorkerLink(device.Id, world.Config.SocketDirectory);
        _p2p = p2p ?? P2PTransports.Create(world.Config, world.AdvertiseAddress);
        NetDevice = world.Config.NetDevice ?? world.HostId;
        Telemetry = new UpdateTelemetry(this);
        _ = Task.Run(WorkerFraming.Prime); // Off the caller's path: the first update then finds the worker protocol's contracts ready.
    }

    public World World { get; }

    public IDevice Device { get; }

    /// <summary>All ranks of the world, for the update's collectives on device memory.</summary>
    public ICommunicator Group { get; }

    public CheckpointRegistry Registry { get; }

    public int Rank => World.Rank;

    /// <summary>The network device P2P reads of this rank go through (<c>CKPT_ENGINE_NET_DEVICE</c>; default: one per host).</summary>
    public string NetDevice { get; }

    /// <summary>How this rank's P2P store serves and reads ("tcp" or "ucx"; a ucx store serves TCP readers too).</summary>
    public string P2PTransport => _p2p.Transport;

    /// <summary>The store a P2P update reads through: this rank's, or its TCP side when an update asks for tcp.</summary>
    private IP2PStore ReaderFor(P2PTransport? transport) => transport switch
    {
        null or Runtime.P2P.P2PTransport.Auto => _p2p,
        Runtime.P2P.P2PTransport.Tcp => _p2p is UcxP2PStore ucx ? ucx.Tcp : _p2p,
        _ => _p2p as UcxP2PStore ?? throw new UpdateFailedException(
            $"rank {Rank} cannot read over ucx: its P2P store runs {_p2p.Transport} (start it with --p2p-transport ucx or {P2PTransports.Variable}=ucx)"),
    };

    /// <summary>Where other instances read this rank's registered buffers (P2P).</summary>
    public string P2PAddress => _p2p.Address;

    /// <summary>This rank's meter, activities and last update (see <see cref="UpdateTelemetry"/>).</summary>
    public UpdateTelemetry Telemetry { get; }

    /// <summary>The update running on this rank now, or null.</summary>
    public UpdateProgress? Progress => _progress;

    /// <summary>An update runs on this rank now (from the moment it takes the rank, before its buckets are known).</summary>
    public bool IsUpdating => _updating;

    /// <summary>The operation running on this rank now ("an update of 'x'"), or null.</summary>
    public string? RunningOperation => _gate.Running;

    /// <summary>How long <see cref="DisposeAsync"/> waits for a running operation after cancelling it.</summary>
    public static readonly TimeSpan CloseWait = TimeSpan.FromSeconds(10);

    /// <summary>Where this rank's worker connects.</summary>
    public string WorkerAddress => _worker.Address;

    /// <summary>
    /// Registers this rank's share of a checkpoint (files, selected tensors, in-memory tensors) into host
    /// memory, and offers its buffers for P2P reads as "name/index".
    /// </summary>
    public RegisteredCheckpoint RegisterCheckpoint(string name, IEnumerable<FileSelection> files, IEnumerable<NamedTensor>? tensors = null, RegisterOptions? options = null)
    {
        var checkpoint = Registry.RegisterCheckpoint(name, files, tensors, options);
        try
        {
            for (var i = 0; i < checkpoint.Buffers.Count; i++)
            {
                _p2p.Register(P2PName(name, i), checkpoint.Buffers[i].Address, checkpoint.Buffers[i].Size);
                Device.RegisterHostMemory(checkpoint.Buffers[i].Address, checkpoint.Buffers[i].Size); // Page-locked on a GPU: async, full-speed copies.
            }
        }
        catch
        {
            Unpublish(name, checkpoint);
            Registry.UnregisterCheckpoint(name);
            throw;
        }
        return checkpoint;
    }

    internal static string P2PName(string checkpoint, int buffer) => $"{checkpoint}/{buffer}";

    private void Unpublish(string name, RegisteredCheckpoint checkpoint)
    {
        for (var i = 0; i < checkpoint.Buffers.Count; i++)
        {
            _p2p.Unregister(P2PName(name, i)); // Waits for P2P reads in flight before the memory goes.
            Device.UnregisterHostMemory(checkpoint.Buffers[i].Address);
        }
    }

    /// <summary>
    /// Frees the checkpoint's host memory and forgets its metas, here and in the rendezvous store (rank 0 publishes
    /// them on every gather; once any rank frees its share they describe memory that is gone). The device buffers go
    /// too, unless another checkpoint is still registered or this one was pooled (an RL loop that registers the same
    /// layout again next step and should not pay for fresh device memory each time). Returns whether this rank held
    /// any of it; a rank that holds nothing but gathered its metas forgets them all the same.
    /// </summary>
    /// <exception cref="ServerBusyException">An update or gather runs: its memory is in use.</exception>
    public async Task<bool> UnregisterCheckpointAsync(string name, CancellationToken ct = default)
    {
        using var _ = _gate.Enter($"unregistering '{name}'");
        bool known;
        lock (_lock)
        {
            known = _metas.Remove(name);
        }
        var found = Registry.TryGet(name, out var checkpoint);
        if (found)
        {
            Unpublish(name, checkpoint);
        }
        var pooled = found && checkpoint.Buffers.Any(b => b.Kind == MemoryBufferKind.Pooled);
        DropPeerBuffers([]); // Other ranks unregister theirs too: do not keep their memory alive.
        var removed = Registry.UnregisterCheckpoint(name);
        if (!pooled && Registry.Checkpoints.Count == 0)
        {
            DropDeviceMemory();
        }
        if (known || found)
        {
            await UnpublishMetasAsync(name, ct).ConfigureAwait(false);
        }
        return removed;
    }

    /// <summary>Takes the published metas of <paramref name="name"/> out of the store; with the world broken, the store went with it.</summary>
    private async Task UnpublishMetasAsync(string name, CancellationToken ct)
    {
        try
        {
            await World.Store.DeleteAsync(MetasKey(name), ct).ConfigureAwait(false);
        }
        catch (Runtime.Rendezvous.RendezvousException)
        {
            // Nothing is left to clean where the store is gone; the memory is freed either way.
        }
    }

    /// <summary>
    /// All ranks exchange what they hold of <paramref name="name"/> (a rank may hold nothing). Every rank
    /// calls this; afterwards every rank knows every tensor's owner, offset and size.
    /// </summary>
    /// <exception cref="ServerBusyException">Another operation runs on this rank.</exception>
    public async Task<GlobalMetas> GatherMetasAsync(string name, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        using var _ = _gate.Enter($"gathering the metas of '{name}'");
        using var closing = CancellationTokenSource.CreateLinkedTokenSource(ct, _closing.Token);
        return await GatherAsync(name, timeout, closing.Token).ConfigureAwait(false);
    }

    private async Task<GlobalMetas> GatherAsync(string name, TimeSpan? timeout, CancellationToken ct)
    {
        var local = new RankMetas(Rank, Device.Id, P2PAddress,
            Registry.TryGet(name, out var checkpoint)
                ? checkpoint.Buffers.Select(b => new BufferMeta(b.Size, b.Address, b.Metas)).ToList()
                : [],
            NetDevice);
        var blobs = await World.Group.AllGatherAsync(GlobalMetas.RankToJson(local), timeout ?? TimeSpan.FromSeconds(300), ct).ConfigureAwait(false);
        var metas = new GlobalMetas(name, blobs.Select((b, r) => GlobalMetas.RankFromJson(b, $"metas from rank {r}")).ToList());
        metas.Validate($"checkpoint '{name}'");
        if (!metas.AllTensors.Any())
        {
            return metas; // No rank holds it (a mistyped name): nothing to keep, here or in the store, for every name ever asked.
        }
        Remember(metas);
        // Device buffers are allocated now, not in the first update, and faulted in (first touches cost more than the copies) unless
        // every rank is on this host with its buffers in shared segments: then workers will read those in place and leave them untouched.
        var wait = timeout ?? TimeSpan.FromSeconds(300);
        var free = (await World.Group.AllReduceAsync([Device.FreeMemory], ReduceOp.Min, wait, ct).ConfigureAwait(false))[0];
        var mine = Encoding.UTF8.GetBytes((RegisteredSegments(name) is null ? "0" : "1") + World.HostId);
        var all = await World.Group.AllGatherAsync(mine, wait, ct).ConfigureAwait(false); // Every rank calls it: collectives go in the same order.
        var inPlace = Device.HostAccessible && mine[0] == (byte)'1' && all.All(b => b.AsSpan().SequenceEqual(mine));
        PrepareDeviceMemory(metas, free, prefault: !inPlace);
        if (Rank == 0)
        {
            // Published for instances that join later without a metas file (see FetchMetasAsync).
            await World.Store.SetAsync(MetasKey(name), metas.ToJson(), ct).ConfigureAwait(false);
        }
        return metas;
    }

    private static string MetasKey(string checkpoint) => $"metas/{checkpoint}";

    /// <summary>
    /// Reads the metas a running fleet published in its rendezvous store (its rank 0 does so on every
    /// gather), for a new instance joining over P2P without a metas file. Connects as a tool, not a rank.
    /// </summary>
    /// <param name="store">The fleet's <c>MASTER_ADDR:MASTER_PORT</c>.</param>
    public static async Task<GlobalMetas> FetchMetasAsync(string store, string name, string? token, TimeSpan timeout, CancellationToken ct = default)
    {
        var colon = store.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(store[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
        {
            throw new CheckpointEngineException($"'{store}' is not a store address (HOST:PORT)");
        }
        var client = await Runtime.Rendezvous.StoreClient.ConnectAsync(store[..colon], port, token, -1, timeout, ct).ConfigureAwait(false);
        try
        {
            var json = (await client.WaitGetAsync([MetasKey(name)], timeout, ct).ConfigureAwait(false))[0];
            return GlobalMetas.Parse(json, $"metas of '{name}' from the store at {store}");
        }
        finally
        {
            await client.ByeAsync().ConfigureAwait(false);
        }
    }

    public GlobalMetas? GetMetas(string name)
    {
        lock (_lock)
        {
            return _metas.GetValueOrDefault(name);
        }
    }

    /// <summary>
    /// Uses metas gathered elsewhere (saved by a running fleet) for updates of <see cref="GlobalMetas.Checkpoint"/>: a joiner's. Its device
    /// buffers (and, for a device the host cannot address, the page-locked bucket its P2P reads land in) are allocated now, sized from
    /// this rank's free memory, and faulted in, since a P2P update stages into them: its first update does not pay for either.
    /// </summary>
    /// <exception cref="ServerBusyException">Another operation runs on this rank.</exception>
    public void SetMetas(GlobalMetas metas)
    {
        ArgumentNullException.ThrowIfNull(metas);
        using var _ = _gate.Enter($"setting the metas of '{metas.Checkpoint}'");
        Remember(metas);
        if (metas.AllTensors.Any() && PrepareDeviceMemory(metas, Device.FreeMemory, prefault: true) is { } sizing && !Device.HostAccessible)
        {
            StagingFor(sizing);
        }
    }

    private void Remember(GlobalMetas metas)
    {
        lock (_lock)
        {
            _metas[metas.Checkpoint] = metas;
        }
    }

    /// <summary>
    /// The device buffer for a bucket layout: kept across updates while the layout is the same (first
    /// touches are expensive), and announced to the update's group as shared memory its members may read.
    /// </summary>
    private DeviceBuffer DeviceBufferFor(BucketSizing sizing, ICommunicator group)
    {
        if (_deviceBuffer is null || _sizing != sizing)
        {
            DropDeviceMemory();
            _deviceBuffer = Device.AllocateShared(sizing.DeviceBytes);
            _sizing = sizing;
            _deviceFaulted = false;
        }
        group.Share(_deviceBuffer);
        return _deviceBuffer;
    }

    /// <summary>
    /// Allocates the device buffers an update of <paramref name="metas"/> with default options will use, and faults them in when
    /// <paramref name="prefault"/> (an update that stages into them). An update whose sizing comes out differently (other options,
    /// less free memory) allocates its own as before.
    /// </summary>
    /// <returns>The sizing the buffers were made for; null when there is too little memory (the update will say so).</returns>
    private BucketSizing? PrepareDeviceMemory(GlobalMetas metas, long free, bool prefault)
    {
        BucketSizing sizing;
        try
        {
            var defaults = new UpdateOptions();
            sizing = BucketSizing.Plan(free, metas.LargestTensor, metas.Ranks.Max(r => r.TotalBytes), defaults.MemoryFraction, defaults.MaxBucketSize ?? World.Config.MaxBucketSize);
        }
        catch (CheckpointEngineException)
        {
            return null;
        }
        var buffer = DeviceBufferFor(sizing, Group);
        if (prefault && !_deviceFaulted)
        {
            buffer.SharedSegment?.Prefault();
            _deviceFaulted = true;
        }
        return sizing;
    }

    /// <summary>
    /// Host memory a P2P read lands in before its copy to a device this process cannot address (a GPU):
    /// one bucket, page-locked, kept with the device buffers.
    /// </summary>
    private NativeBuffer StagingFor(BucketSizing sizing)
    {
        if (_staging is null || _staging.Capacity < sizing.BucketSize)
        {
            DropStaging();
            _staging = NativeBuffer.Allocate(sizing.BucketSize);
            Device.RegisterHostMemory(_staging.Address, _staging.Capacity);
        }
        return _staging;
    }

    /// <summary>Frees the device buffers now (the next update allocates them again).</summary>
    /// <exception cref="ServerBusyException">An update runs on them.</exception>
    public void ReleaseDeviceMemory()
    {
        using var _ = _gate.Enter("releasing the device memory");
        DropDeviceMemory();
    }

    private void DropDeviceMemory()
    {
        _relay?.Dispose(); // Its groups share the buffer that goes now.
        _relay = null;
        if (_deviceBuffer is not null)
        {
            Group.Unshare(_deviceBuffer);
        }
        _deviceBuffer?.Dispose();
        _deviceBuffer = null;
        _sizing = null;
        DropStaging();
    }

    /// <summary>Another rank's registered segment mapped here (read-only), mapped on first use and kept.</summary>
    private nint PeerBuffer(SegmentRef segment)
    {
        lock (_peerBuffers)
        {
            if (!_peerBuffers.TryGetValue(segment.Handle, out var mapped) || mapped.Size < segment.Size)
            {
                mapped?.Dispose();
                mapped = _peerBuffers[segment.Handle] = SharedMemorySegment.OpenReadOnly(segment.Handle, segment.Size);
            }
            return mapped.Address;
        }
    }

    /// <summary>Unmaps the other ranks' segments that are not in <paramref name="named"/> (they may have been unregistered).</summary>
    private void DropPeerBuffers(IEnumerable<SegmentRef> named)
    {
        lock (_peerBuffers)
        {
            var keep = named.Select(s => s.Handle).ToHashSet(StringComparer.Ordinal);
            foreach (var name in _peerBuffers.Keys.Where(n => !keep.Contains(n)).ToList())
            {
                _peerBuffers.Remove(name, out var s);
                s!.Dispose();
            }
        }
    }

    private void DropStaging()
    {
        if (_staging is not null)
        {
            Device.UnregisterHostMemory(_staging.Address);
            _staging.Dispose();
            _staging = null;
        }
    }

    /// <summary>
    /// Cancels a running operation (it fails on this rank, and so on every rank) and waits up to
    /// <see cref="CloseWait"/> for it to end before freeing memory; if it does not end, its memory is
    /// left to the process's exit rather than freed under it. Idempotent.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _closing.CancelAsync().ConfigureAwait(false);
        if (!await _gate.CloseAsync(CloseWait).ConfigureAwait(false))
        {
            return;
        }
        DropDeviceMemory();
        DropPeerBuffers([]);
        _worker.Dispose();
        _p2p.Dispose();
        Registry.Dispose();
        Telemetry.Dispose();
        _gate.Dispose();
        _closing.Dispose();
    }
}
