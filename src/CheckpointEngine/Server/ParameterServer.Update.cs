using System.Diagnostics;
using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>The update: every registered byte goes to a device buffer, to every rank, and into every worker, bucket by bucket.</summary>
public sealed partial class ParameterServer
{
    /// <summary>
    /// Pushes checkpoint <paramref name="name"/> into the workers. Every rank stages the buckets it sends
    /// into its own staging buffers ahead of their turn (all ranks copy at once), bucket k is broadcast
    /// from its stager into the others' broadcast buffers while the workers reload bucket k−1 (see
    /// <see cref="BucketSizing"/> for the buffers). After each bucket the ranks agree whether every worker succeeded; if
    /// one failed, all abort their workers and raise its message. A dead rank or a missed deadline fails
    /// the update on every survivor; the next update starts clean.
    /// </summary>
    /// <param name="mode">
    /// <see cref="UpdateMode.Broadcast"/>: every rank of the world takes part and owners stage their own buckets.
    /// <see cref="UpdateMode.P2P"/>: only the listed ranks take part (the others return at once); their receivers
    /// read the buckets from the owners' registered host memory (owners named by the metas, possibly in
    /// another world that keeps serving) and broadcast them among the listed ranks.
    /// </param>
    /// <param name="trigger">Tells the inference engine to connect its workers (called on every taking part rank, see <see cref="UpdateContext"/>); null when workers connect on their own.</param>
    /// <exception cref="ServerBusyException">Another operation runs on this rank.</exception>
    /// <exception cref="UpdateFailedException">The update failed on some rank; every rank that took part raises the same cause.</exception>
    public Task<UpdateReport> UpdateAsync(string name, UpdateMode mode, Func<UpdateContext, CancellationToken, Task>? trigger,
        UpdateOptions? options = null, CancellationToken ct = default) => UpdateAsync(name, mode, trigger, options, prepare: false, ct);

    /// <summary>
    /// Readies the next update of <paramref name="name"/> without moving a byte, so that the first update runs as a warm one: the
    /// ranks size and plan it as <see cref="UpdateAsync(string, UpdateMode, Func{UpdateContext, CancellationToken, Task}?, UpdateOptions?, CancellationToken)"/>
    /// would, the engine connects its workers, each worker maps what the update will read and keeps it mapped (on one host, the owners'
    /// registered memory, faulted in), P2P ranks open their connections to the owners, a rank that will stage faults its device buffer
    /// in, and the ranks learn the workers' declarations. Call it after registering and
    /// gathering metas, while the engine serves: no weight changes. Collective, with the same arguments and failures as an update;
    /// a worker that cannot prepare (an older one: its hello does not offer it) fails it on every rank, naming its device.
    /// The report has no buckets.
    /// </summary>
    public Task<UpdateReport> PrepareAsync(string name, UpdateMode mode, Func<UpdateContext, CancellationToken, Task>? trigger,
        UpdateOptions? options = null, CancellationToken ct = default) => UpdateAsync(name, mode, trigger, options, prepare: true, ct);

    private async Task<UpdateReport> UpdateAsync(string name, UpdateMode mode, Func<UpdateContext, CancellationToken, Task>? trigger,
        UpdateOptions? options, bool prepare, CancellationToken ct)
    {
        options ??= new UpdateOptions();
        if (options.BucketsInFlight is < 1 or > 8)
        {
            throw new ArgumentException($"BucketsInFlight {options.BucketsInFlight} is outside [1, 8]", nameof(options));
        }
        if (mode.Method == UpdateMethod.P2P && (mode.Ranks.IsEmpty || mode.Ranks.Distinct().Count() != mode.Ranks.Length || mode.Ranks.Any(r => r < 0 || r >= World.Size)))
        {
            throw new ArgumentException($"ranks [{string.Join(", ", mode.Ranks)}] must be distinct ranks of this world (size {World.Size})", nameof(mode));
        }
        if (!mode.Includes(Rank))
        {
            return new UpdateReport(name, Rank, 0, 0, 0, TimeSpan.Zero, []);
        }
        using var _ = _gate.Enter($"{(prepare ? "a prepare" : "an update")} of '{name}'");
        using var closing = CancellationTokenSource.CreateLinkedTokenSource(ct, _closing.Token);
        ct = closing.Token;
        _updating = true;
        using var telemetry = Telemetry.Start(name, mode, prepare);
        try
        {
            if (mode.Method == UpdateMethod.Broadcast)
            {
                return telemetry.Completed(await BroadcastUpdateAsync(name, trigger, options, prepare, ct).ConfigureAwait(false));
            }
            using var group = await Group.CreateSubGroupAsync("p2p", [.. mode.Ranks], options.Timeout, ct).ConfigureAwait(false);
            return telemetry.Completed(await P2PUpdateAsync(name, group, trigger, options, prepare, ct).ConfigureAwait(false));
        }
        catch (Exception e) when (telemetry.Failed(e))
        {
            throw; // Never taken: the filter only records.
        }
        catch (CollectiveException e)
        {
            throw new UpdateFailedException($"{(prepare ? "prepare" : "update")} of '{name}' failed on rank {Rank}: {e.Message}", e);
        }
        finally
        {
            _updating = false;
        }
    }

    private async Task<UpdateReport> BroadcastUpdateAsync(string name, Func<UpdateContext, CancellationToken, Task>? trigger, UpdateOptions options, bool prepare, CancellationToken ct)
    {
        var metas = GetMetas(name) ?? await GatherAsync(name, options.Timeout, ct).ConfigureAwait(false);
        Registry.TryGet(name, out var local);
        if (metas.Ranks.Count != World.Size)
        {
            throw new UpdateFailedException($"metas of '{name}' are for {metas.Ranks.Count} ranks; this world has {World.Size} (to update from other instances, use P2P mode)");
        }
        if ((local?.TensorCount ?? 0) != metas.Ranks[Rank].Buffers.Sum(b => b.Metas.Count))
        {
            throw new UpdateFailedException($"rank {Rank} holds a different share of '{name}' than its gathered metas say: gather metas again after registering");
        }
        // Owners copy their own buckets from host memory to their device buffer; they are the broadcast roots.
        List<BucketStep> Plan(BucketSizing sizing, IReadOnlyList<string> _) =>
            BucketPlanner.Interleave(metas.Ranks.Select(r => BucketPlanner.Cut(r, sizing.BucketSize)))
                .Select(b => new BucketStep(b, b.Owner, (slot, wanted) => Task.Run(() => Device.CopyHostToDevice(
                    b.Ranges.SelectMany(r => BucketPart.Cut(r, wanted).Select(c => new HostCopy(local!.Buffers[r.Buffer].Address + (nint)c.Source, slot + (nint)c.BucketOffset, c.Length))).ToArray()), ct)))
                .ToList();
        return await RunAsync(name, UpdateMode.Broadcast, Group, metas, Plan, trigger, options, prepare, null, ct).ConfigureAwait(false);
    }

    private async Task<UpdateReport> P2PUpdateAsync(string name, ICommunicator group, Func<UpdateContext, CancellationToken, Task>? trigger, UpdateOptions options, bool prepare, CancellationToken ct)
    {
        var metas = GetMetas(name) ?? throw new UpdateFailedException(
            $"a P2P update of '{name}' needs the owners' metas: gather them on the owners and load them here (GlobalMetas.Load, then SetMetas)");
        var store = ReaderFor(options.P2PTransport);
        var unreachable = metas.Ranks.Where(r => r.Buffers.Count > 0 && r.P2PAddress is null).Select(r => r.Rank).ToList();
        if (unreachable.Count > 0)
        {
            throw new UpdateFailedException($"metas of '{name}' give no P2P address for owner ranks {string.Join(", ", unreachable)}");
        }
        // Receivers (the lowest rank of each network device among the listed ranks) read buckets from the
        // owners, spread over the owners' devices, and broadcast them to the other listed ranks.
        List<BucketStep> Plan(BucketSizing sizing, IReadOnlyList<string> netDevices)
        {
            var buckets = metas.Ranks.SelectMany(r => BucketPlanner.Cut(r, sizing.BucketSize)).Select(b => (b.Owner, b)).ToList();
            string OwnerDevice(int owner) => metas.Ranks[owner].NetDevice ?? metas.Ranks[owner].P2PAddress!;
            var receivers = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, group.Size), r => netDevices[r]);
            // A device this process cannot address (a GPU) gets the bytes through a page-locked host bucket.
            var staging = Device.HostAccessible ? null : StagingFor(sizing);
            async Task Read(H2DBucket bucket, nint slot, IReadOnlyList<(long Offset, long Length)>? wanted)
            {
                var target = staging?.Address ?? slot;
                await store.ReadAsync(metas.Ranks[bucket.Owner].P2PAddress!,
                    bucket.Ranges.SelectMany(r => BucketPart.Cut(r, wanted).Select(c => new P2PRead(P2PName(name, r.Buffer), c.Source, c.Length, target + (nint)c.BucketOffset))).ToList(),
                    options.Timeout, ct).ConfigureAwait(false);
                if (staging is not null)
                {
                    await Task.Run(() => Device.CopyHostToDevice([new HostCopy(staging.Address, slot, bucket.Size)]), ct).ConfigureAwait(false);
                }
            }
            return ReceiverAssignment.Assign(buckets, OwnerDevice, receivers)
                .Select(a => new BucketStep(a.Bucket, a.Receiver, (slot, wanted) => Read(a.Bucket, slot, wanted)))
                .ToList();
        }
        // A prepare opens the connections to the owners this rank will read from.
        Task Connect(List<BucketStep> steps) => Task.WhenAll(steps.Where(s => s.Stager == group.Rank).Select(s => metas.Ranks[s.Bucket.Owner].P2PAddress!)
            .Distinct(StringComparer.Ordinal).Select(owner => store.ConnectAsync(owner, options.Timeout, ct)));
        var report = await RunAsync(name, UpdateMode.P2P(group.Members), group, metas, Plan, trigger, options, prepare, Connect, ct).ConfigureAwait(false);
        return report with { P2PTransport = store.Transport };
    }

    /// <summary>Sizes, plans and runs an update among the members of <paramref name="group"/>.</summary>
    private async Task<UpdateReport> RunAsync(string name, UpdateMode mode, ICommunicator group, GlobalMetas metas, Func<BucketSizing, IReadOnlyList<string>, List<BucketStep>> plan,
        Func<UpdateContext, CancellationToken, Task>? trigger, UpdateOptions options, bool prepare, Func<List<BucketStep>, Task>? connect, CancellationToken ct)
    {
        // A P2P read can fail (an owner died): the others must not wait for a broadcast that will not come.
        var agreeOnStaging = mode.Method == UpdateMethod.P2P;
        if (options.Verify && metas.AllTensors.FirstOrDefault(m => m.Crc32 is null) is { } bare)
        {
            throw new UpdateFailedException($"cannot verify the update of '{name}': its metas carry no checksum for tensor '{bare.Name}' (written by an older version: gather the metas again)");
        }
        var clock = Stopwatch.StartNew();
        var timeout = options.Timeout;

        // Bucket size from the smallest free device memory over the members; in the same round, whether every member's last broadcast
        // update had declared parts on GPUs across hosts (then, by default, several relayed buckets move at once).
        var reduced = await group.AllReduceAsync([Device.FreeMemory, _declaredAcrossHosts && mode.Method == UpdateMethod.Broadcast ? 1 : 0], ReduceOp.Min, timeout, ct).ConfigureAwait(false);
        var sizing = BucketSizing.Plan(reduced[0], metas.LargestTensor, metas.Ranks.Max(r => r.TotalBytes), options.MemoryFraction, options.MaxBucketSize ?? World.Config.MaxBucketSize,
            options.BucketsInFlight ?? (reduced[1] == 1 ? GpuBucketsInFlight : 1));
        var device = DeviceBufferFor(sizing, group);

        // Every member learns every worker's ticket and network device; the trigger tells the engine; our worker connects and proves its ticket.
        var ticket = WorkerTicket.New(WorkerAddress);
        var segments = mode.Method == UpdateMethod.Broadcast && Device.HostAccessible ? RegisteredSegments(name) : null;
        var members = (await group.AllGatherAsync(UpdateMember.For(Rank, Device.Id, ticket, NetDevice, World.HostId, segments,
            device.SharedSegment is { } own ? new SegmentRef(own.Name, own.Size) : null).ToBytes(), timeout, ct).ConfigureAwait(false))
            .Select((b, r) => UpdateMember.Parse(b, group.Members[r]))
            .ToList();
        var steps = plan(sizing, members.Select(m => m.NetDevice).ToList());
        if (sizing.InFlight > 1)
        {
            // Buckets that move at once leave through different hosts: the stagers' buckets taken host by host, each host's in their order.
            steps = ByHostInTurn(steps, [.. members.Select(m => m.HostId)]);
        }
        var direct = DirectFor(name, mode, members, metas) ?? StagedFor(members, steps, sizing);
        if (prepare && !_deviceFaulted && direct is not { Staged: false } && device.SharedSegment is { } segment)
        {
            // The update will stage into it: fault it in now, not in its first buckets. Workers that read buckets where they were
            // staged leave the broadcast slots untouched: then only the staging slots this rank fills.
            if (direct is { Staged: true })
            {
                segment.Prefault(sizing.StagingOffset(0), Math.Min(steps.Count(s => s.Stager == group.Rank), sizing.StagingSlots) * sizing.BucketSize);
            }
            else
            {
                segment.Prefault();
            }
        }
        _deviceFaulted |= direct is not { Staged: false }; // A staged update touches them.
        var connecting = prepare && connect is not null ? connect(steps) : Task.CompletedTask;
        using var triggerCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var context = new UpdateContext(name, Rank, members.Select(m => m.Socket).ToList());
        var triggered = trigger is null ? Task.CompletedTask : Task.Run(() => trigger(context, triggerCts.Token), triggerCts.Token);
        WorkerConnection? worker = null;
        try
        {
            string? failure = null;
            try
            {
                worker = await _worker.AcceptAsync(ticket, triggered, timeout, ct).ConfigureAwait(false);
                var registered = direct is not null && worker.MapsSegments ? direct.Segments : null;
                failure = prepare && !worker.Prepares ? $"the worker of device '{Device.Id}' cannot prepare (its hello does not offer it: an older worker); its first update maps what it reads itself"
                    : WantsFailure(worker, metas) ?? await worker.CallAsync(new AttachMessage(device.Kind, device.Handle, device.Size, Device.Id, registered, prepare,
                        Prefault: prepare && direct is { Staged: false }), timeout, ct).ConfigureAwait(false);
            }
            catch (UpdateFailedException e)
            {
                failure = e.Message;
            }
            // One round settles the attach and tells every member what comes next needs: whether each worker maps the owners'
            // segments, and each worker's declaration (its digest) and the declarations each member already knows.
            var said = (await Agreement.AgreeAsync(group, failure, AttachState.Of(worker!, _knownWants.Keys).ToBytes(), "attaching the worker", timeout, ct)
                .ConfigureAwait(false)).Select((b, r) => AttachState.Parse(b, group.Members[r])).ToList();
            if (direct is not null)
            {
                // Workers read the owners' memory in place only when every one of them mapped it (older workers do not).
                direct = said.All(m => m.Maps) ? direct : null;
                DropPeerBuffers(direct is { Staged: false } ? direct.Segments : []);
            }

            var total = steps.Sum(s => s.Bucket.Size);
            _progress = prepare ? null : new UpdateProgress(name, mode.Name, DateTimeOffset.UtcNow - clock.Elapsed, 0, steps.Count, 0, total);
            // Every member learns the distinct declarations (one list per class of workers that keep the same bytes); stagers
            // then stage only the bytes some worker keeps. A worker that declared what it keeps gets only that (on devices the
            // host can reach, and on GPUs with NCCL).
            var (classes, classOf, listBytes) = await ExchangeWantsAsync(group, worker!.Wants, said, timeout, ct).ConfigureAwait(false);
            if (prepare)
            {
                // Nothing moves: the worker keeps what it mapped, and the session ends at the release (no post-load hook).
                var unprepared = await worker.CallAsync(new ReleaseMessage(), timeout, ct).ConfigureAwait(false) is { } error ? $"releasing the buffer: {error}" : null;
                unprepared ??= await connecting.ContinueWith(t => t.Exception?.InnerException?.Message, TaskScheduler.Default).ConfigureAwait(false);
                await Agreement.AgreeAsync(group, unprepared, "the end of the prepare", timeout, ct).ConfigureAwait(false);
                await AwaitTriggerAsync(triggered, timeout).ConfigureAwait(false);
                return new UpdateReport(name, Rank, sizing.BucketSize, sizing.Slots, 0, clock.Elapsed, []) { WorkerClasses = classes.Count, DeclarationBytes = listBytes, InPlace = direct is { Staged: false }, ReadInStaging = direct is { Staged: true } };
            }
            direct = direct is { Staged: true } && classes.Any(c => c.Wants is not null) ? null : direct; // Parts are cut per rank: staged and broadcast.
            // Parts are cut out of buckets in host memory, or on GPUs by NCCL's communicator on its stream.
            var cuts = Device.HostAccessible || group is NcclCommunicator;
            // A worker that takes strided parts gets its column slices where they lie in host memory (the owners' segments, or its stager's buffer): not gathered.
            var (parts, wanted, classBytes) = PlanFor(steps, worker.Wants is { } wants && cuts ? wants : null, worker.TakesStrided && Device.HostAccessible,
                classes.Select(c => c.Digest).ToList(), classes.Select(c => c.Wants).ToList());
            // Between hosts, each class's part travels on its own where that moves no more bytes into any host than the plain way (see
            // ClassRelay.Pays), once some worker declared what it keeps (a class that declared nothing relays the whole bucket). On the host
            // backend the members on the stager's host copy just their parts out of its shared buffer; on GPUs the stager scatters the parts
            // among them with NCCL sends and receives, and each class broadcasts over its own NCCL communicator.
            var declared = classes.Any(c => c.Wants is not null);
            var hostCount = members.Select(m => m.HostId).Distinct(StringComparer.Ordinal).Count();
            if (mode.Method == UpdateMethod.Broadcast)
            {
                _declaredAcrossHosts = declared && !Device.HostAccessible && hostCount > 1;
            }
            var relay = declared && cuts && (options.ClassRelays ?? RelaysByDefault(Device.HostAccessible, hostCount, sizing.InFlight))
                ? await RelaysFor(group, members.Select(m => m.HostId).ToList(), classOf, steps, classBytes, device, timeout, ct).ConfigureAwait(false)
                : null;
            using var ownedRelay = ReferenceEquals(relay, _relay) ? null : relay; // Groups of a P2P update's group go with it.
            BucketPump.Relaying? relaying = null;
            if (relay is not null)
            {
                var routes = relay.Routes(steps, classBytes);
                var (proxies, proxyBuffer, proxyStride) = relay.ProxyParts(steps, routes, [.. classes.Select(c => c.Wants)], sizing.InFlight);
                relaying = new BucketPump.Relaying(relay, routes, proxies, proxyBuffer, [.. classes.Select(c => c.Wants is null)]) { ProxyStride = proxyStride };
            }
            // On GPUs a declared update scatters each bucket from its stager among the members of its host (all of them, or a relay's local
            // step): every member's NVLink ingress is its part, not the bucket. Between hosts a bucket goes the plain way (one broadcast ring,
            // the stager's egress one bucket) unless it is relayed: a scatter to every member would send each remote class its part apart.
            var scatter = declared && !Device.HostAccessible && group is NcclCommunicator
                ? new BucketPump.Scattering(hostCount == 1, classOf, ClassPartsFor(steps, group.Rank, classes.Select(c => c.Digest).ToList(), classes.Select(c => c.Wants).ToList()))
                : null;
            var networkBefore = group.NetworkBytesReceived + (relay?.NetworkBytesReceived ?? 0);
            var receivedBefore = group.BytesReceived + (relay?.BytesReceived ?? 0);
            _ = group.TakeLinkTransfers(); // Earlier updates' legs (a failed one's) are not this one's.
            _ = relay?.TakeLinkTransfers();
            var (timings, gathered) = await BucketPump.RunAsync(group, steps, sizing, device.Address, worker!, agreeOnStaging, options.Verify, parts, wanted,
                relaying, scatter, direct, timeout, clock,
                done => _progress = _progress! with { BucketsDone = done, BytesDone = steps.Take(done).Sum(s => s.Bucket.Size) }, ct).ConfigureAwait(false);
            var network = group.NetworkBytesReceived + (relay?.NetworkBytesReceived ?? 0) - networkBefore;
            var received = group.BytesReceived + (relay?.BytesReceived ?? 0) - receivedBefore;
            var links = LinkTimings([.. group.TakeLinkTransfers(), .. relay?.TakeLinkTransfers() ?? []], timings, clock);

            // Release and the post-load hook settle in one round: every bucket is loaded everywhere already (each was agreed), so a
            // worker's hook runs on whole weights whatever another worker's release does.
            var ending = await worker!.CallAsync(new ReleaseMessage(), timeout, ct).ConfigureAwait(false) is { } released
                ? $"releasing the buffer: {released}"
                : await worker.CallAsync(new FinishMessage(), timeout, ct).ConfigureAwait(false);
            await Agreement.AgreeAsync(group, ending, "the end of the update", timeout, ct).ConfigureAwait(false);
            await AwaitTriggerAsync(triggered, timeout).ConfigureAwait(false);
            var delivered = parts?.Sum(p => p.Bytes) ?? steps.Sum(s => s.Bucket.Items.Sum(i => i.ByteLength));
            var staged = direct is { Staged: false } ? 0 : steps.Select((s, k) => (s, k)).Where(x => x.s.Stager == group.Rank).Sum(x => wanted?[x.k]?.Sum(r => r.Length) ?? x.s.Bucket.Size);
            return new UpdateReport(name, Rank, sizing.BucketSize, sizing.Slots, delivered, clock.Elapsed, timings)
            {
                BytesStaged = staged, WorkerClasses = classes.Count, NetworkBytesReceived = network, RelayedBuckets = relaying?.Routes.Count(r => r is not null) ?? 0, BucketsInFlight = sizing.InFlight,
                DeclarationBytes = listBytes, BytesReceived = received, ScatteredBuckets = scatter is null ? 0 : scatter.OneHost ? steps.Count : relaying?.Routes.Count(r => r is not null) ?? 0, InPlace = direct is { Staged: false }, ReadInStaging = direct is { Staged: true }, Links = links, BytesGathered = gathered,
            };
        }
        catch (Exception e) when (e is UpdateFailedException or CollectiveException)
        {
            if (worker is not null)
            {
                await worker.AbortAsync(e.Message).ConfigureAwait(false);
            }
            // Relays cut off mid-way (several buckets in flight, or an aborted communicator) leave their groups out of step: the next update makes new ones.
            _relay?.Dispose();
            _relay = null;
            await triggerCts.CancelAsync().ConfigureAwait(false);
            throw e as UpdateFailedException ?? new UpdateFailedException($"update of '{name}' failed on rank {Rank}: {e.Message}", e);
        }
        finally
        {
            _progress = null;
            worker?.Dispose();
        }
    }

    /// <summary>Link transfers as offsets from the update's start, each with the bucket whose broadcast turn it lies in (broadcasts run one at a time).</summary>
    private static List<LinkTiming> LinkTimings(IReadOnlyList<LinkTransfer> transfers, List<BucketTiming> buckets, Stopwatch clock)
    {
        var origin = Stopwatch.GetTimestamp() - clock.ElapsedTicks;
        return [.. transfers.Select(t =>
        {
            var (start, end) = (Stopwatch.GetElapsedTime(origin, t.Start), Stopwatch.GetElapsedTime(origin, t.End));
            var bucket = buckets.FindLast(b => b.BroadcastStart <= start && start <= b.BroadcastEnd)?.Index ?? -1;
            return new LinkTiming(bucket, t.Peer, t.PeerHost, t.Sent, t.Bytes, start, end, t.Busy);
        })];
    }

    /// <summary>This rank's registered segments of <paramref name="name"/> in buffer order (none when it holds nothing), or null when some buffer is not one.</summary>
    private List<SegmentRef>? RegisteredSegments(string name) =>
        !Registry.TryGet(name, out var checkpoint) ? []
        : checkpoint.Buffers.All(b => b.Segment is not null) ? [.. checkpoint.Buffers.Select(b => new SegmentRef(b.Segment!.Name, b.Size))]
        : null;

    /// <summary>
    /// The owners' registered memory to load from in place, when every member runs on this host with every buffer of the
    /// checkpoint in a shared segment (a broadcast update on the host backend); else null (stage and broadcast).
    /// </summary>
    private DirectSources? DirectFor(string name, UpdateMode mode, List<UpdateMember> members, GlobalMetas metas)
    {
        if (mode.Method != UpdateMethod.Broadcast || !Device.HostAccessible || members.Count != metas.Ranks.Count
            || members.Any(m => m.HostId != World.HostId || m.Segments is null || m.Segments.Count != metas.Ranks[m.Rank].Buffers.Count))
        {
            return null;
        }
        Func<int, nint>? local = Registry.TryGet(name, out var checkpoint) ? i => checkpoint.Buffers[i].Address : null;
        return new DirectSources([.. members.Select(m => m.Segments!)], Rank, local, PeerBuffer);
    }

    /// <summary>
    /// Every member's device buffer, for workers to read each bucket where its stager staged it, when every member runs on this host
    /// (host backend) and the owners' memory cannot be read in place (a P2P update, buffers not in shared memory); else null.
    /// </summary>
    private DirectSources? StagedFor(List<UpdateMember> members, List<BucketStep> steps, BucketSizing sizing) =>
        Device.HostAccessible && members.All(m => m.HostId == World.HostId && m.DeviceSegment is { Size: > 0 } d && d.Size >= sizing.DeviceBytes)
            ? DirectSources.InStaging([.. members.Select(m => m.DeviceSegment!)], [.. steps.Select(s => s.Stager)], sizing)
            : null;

    /// <summary>
    /// The distinct declarations of the members' workers, one per class (null: a worker that declared nothing, which keeps
    /// everything). Costs O(classes), not O(members × tensors): members exchange 64-character digests, and only the lowest
    /// member of each class sends its list.
    /// </summary>
    private async Task<(List<(string Digest, WorkerWants? Wants)> Classes, int[] ClassOf, long ListBytes)> ExchangeWantsAsync(ICommunicator group, WorkerWants? wants,
        List<AttachState> said, TimeSpan timeout, CancellationToken ct)
    {
        var digest = wants?.Digest() ?? "";
        var digests = said.Select(m => m.Digest).ToList();
        var known = new Dictionary<string, WorkerWants>(_knownWants, StringComparer.Ordinal);
        if (wants is not null)
        {
            known[digest] = wants;
        }
        // The lists go round only when some member lacks one (the first update, or new declarations): an RL loop's later
        // updates exchange digests with the attach, not a list per class (Kimi-K2 at TP 16: 9.7 MB each). Every member decides
        // alike from what all said: nothing goes round when all knew the same declarations and those hold every digest.
        var complete = said.All(m => m.Known == said[0].Known) && digests.All(d => d.Length == 0 || known.ContainsKey(d));
        long listBytes = 0;
        if (!complete)
        {
            var leads = digest.Length > 0 && digests.IndexOf(digest) == group.Rank;
            var lists = await group.AllGatherAsync(leads ? wants!.ToJson() : [], timeout, ct).ConfigureAwait(false);
            listBytes = lists.Sum(l => (long)l.Length);
            for (var r = 0; r < digests.Count; r++)
            {
                if (digests[r].Length == 0 || digests.IndexOf(digests[r]) != r || known.ContainsKey(digests[r]))
                {
                    continue; // Nothing declared, not the first of its class, or known already.
                }
                WorkerWants parsed;
                try
                {
                    parsed = WorkerWants.Parse(lists[r]);
                }
                catch (InvalidDataException e)
                {
                    throw new UpdateFailedException($"rank {group.Members[r]} published wants that cannot be read: {e.Message}", e);
                }
                known[digests[r]] = parsed.Digest() == digests[r]
                    ? parsed
                    : throw new UpdateFailedException($"rank {group.Members[r]} published wants whose digest is not the one it announced");
            }
        }
        var firsts = digests.Where((d, r) => digests.IndexOf(d) == r).ToList();
        _knownWants = firsts.Where(d => d.Length > 0).ToDictionary(d => d, d => known[d], StringComparer.Ordinal); // This update's classes only.
        return ([.. firsts.Select(d => (d, d.Length == 0 ? null : known[d]))], [.. digests.Select(d => firsts.IndexOf(d))], listBytes);
    }

    /// <summary>
    /// <paramref name="steps"/> reordered so that consecutive buckets come from stagers on different hosts where it can be: the first of each
    /// host's buckets (hosts in order of their first bucket), then the second of each, and so on; each host's buckets keep their order.
    /// </summary>
    internal static List<BucketStep> ByHostInTurn(List<BucketStep> steps, string[] hostOf) =>
        [.. BucketPlanner.Interleave(steps.GroupBy(s => hostOf[s.Stager], StringComparer.Ordinal).Select(g => (IReadOnlyList<BucketStep>)g.ToList()))];

    /// <summary>
    /// From how many hosts a GPU update with one bucket in flight relays classes by default (see <see cref="UpdateOptions.ClassRelays"/>): the
    /// simulator's crossover for Kimi-K2 and DeepSeek-V3.1 on H20 nodes of 8 GPUs at tensor parallel 16 lies between 64 and 96 hosts (512 and
    /// 768 GPUs); below it, a whole-bucket broadcast ring is faster. Not yet measured on a GPU cluster.
    /// </summary>
    public const int GpuRelayHosts = 96;

    /// <summary>Whether classes relay between hosts unless told (see <see cref="UpdateOptions.ClassRelays"/>): always on the host backend; on GPUs with several buckets in flight, or from <see cref="GpuRelayHosts"/> hosts.</summary>
    public static bool RelaysByDefault(bool hostBackend, int hosts, int inFlight) => hostBackend || inFlight > 1 || hosts >= GpuRelayHosts;

    /// <summary>
    /// Relayed buckets in flight on GPUs by default, once the engines declare what they keep (see <see cref="UpdateOptions.BucketsInFlight"/>):
    /// with three, the simulator prices the relays below a whole-bucket broadcast ring from two hosts on (Kimi-K2 1.8 s, DeepSeek-V3.1 1.3 s
    /// at 256 H20 GPUs, TP 16). Not yet measured on a GPU cluster.
    /// </summary>
    public const int GpuBucketsInFlight = 3;

    /// <summary>
    /// The relay groups for this update's hosts and classes (null on one host): the world's are kept for later updates
    /// while hosts and classes stay the same; a P2P update's are made for it alone.
    /// </summary>
    private async Task<RelayGroups?> RelaysFor(ICommunicator group, List<string> hostIds, int[] classOf, List<BucketStep> steps, List<long[]> classBytes,
        DeviceBuffer device, TimeSpan timeout, CancellationToken ct)
    {
        var order = hostIds.Distinct(StringComparer.Ordinal).ToList();
        var hostOf = hostIds.Select(h => order.IndexOf(h)).ToArray();
        var relays = order.Select((_, h) => ClassRelay.For(h, hostOf, classOf)).ToArray();
        var hosts = steps.Select((s, k) => (Host: hostOf[s.Stager], Pays: relays[hostOf[s.Stager]]?.Pays(classBytes[k], s.Bucket.Size, hostOf) == true))
            .Where(x => x.Pays).Select(x => x.Host).Distinct().Order().ToArray();
        if (hosts.Length == 0)
        {
            return null; // One host, or nothing to gain.
        }
        var world = ReferenceEquals(group, Group);
        if (world && _relay?.Key == RelayGroups.KeyFor(group, hostOf, classOf, hosts))
        {
            return _relay;
        }
        var relay = await RelayGroups.CreateAsync(group, hostOf, classOf, hosts, device, Device, timeout, ct).ConfigureAwait(false);
        if (world)
        {
            _relay?.Dispose();
            _relay = relay;
        }
        return relay;
    }

    /// <summary>
    /// This worker's part of every bucket (null: it declared nothing) and the bytes of each bucket some worker keeps (null:
    /// all). Planned once per bucket layout and set of declarations and reused while they stay the same (the RL loop
    /// re-registers the same layout every step); the layout is compared exactly, tensor by tensor, never by a hash.
    /// </summary>
    /// <param name="strided">This worker takes one slice along a later dimension as rows where they lie (see <see cref="PartTensor.Pitch"/>).</param>
    /// <param name="digests">The classes' digests as exchanged ("" for a worker that declared nothing), in the order of <paramref name="classes"/>.</param>
    private (List<BucketPart>? Parts, List<IReadOnlyList<(long Offset, long Length)>?>? Wanted, List<long[]> ClassBytes) PlanFor(List<BucketStep> steps, WorkerWants? mine,
        bool strided, List<string> digests, List<WorkerWants?> classes)
    {
        var key = (mine?.Digest() ?? "") + (strided ? "|strided|" : "|") + string.Join(",", digests);
        if (_partsPlan is { } plan && plan.Wants == key && SameLayout(plan.Buckets, steps))
        {
            return (plan.Parts, plan.Wanted, plan.ClassBytes);
        }
        var parts = mine is null ? null : steps.Select(s => BucketPart.Of(s.Bucket, mine, strided)).ToList();
        var wanted = classes.Any(c => c is null) ? null : steps.Select(s => BucketPart.Wanted(s.Bucket, classes)).ToList();
        var classBytes = steps.Select(s => classes.Select(c => BucketPart.BytesOf(s.Bucket, c)).ToArray()).ToList();
        _partsPlan = (key, steps.Select(s => s.Bucket).ToList(), parts, wanted, classBytes);
        PartPlans++;
        return (parts, wanted, classBytes);
    }

    /// <summary>
    /// For the buckets this member stages (null for the others), every class's part (null: a class that declared nothing): what a scattering
    /// root sends each member. Planned once per bucket layout, stagers and set of declarations, like <see cref="PlanFor"/>.
    /// </summary>
    private List<BucketPart?[]?> ClassPartsFor(List<BucketStep> steps, int member, List<string> digests, List<WorkerWants?> classes)
    {
        var key = $"{member}|{string.Join(",", digests)}|{string.Join(",", steps.Select(s => s.Stager))}";
        if (_classPartsPlan is { } plan && plan.Key == key && SameLayout(plan.Buckets, steps))
        {
            return plan.Parts;
        }
        var parts = steps.Select(s => s.Stager == member ? classes.Select(c => c is null ? null : BucketPart.Of(s.Bucket, c)).ToArray() : null).ToList();
        _classPartsPlan = (key, steps.Select(s => s.Bucket).ToList(), parts);
        return parts;
    }

    internal static bool SameLayout(List<H2DBucket> planned, List<BucketStep> steps)
    {
        if (planned.Count != steps.Count)
        {
            return false;
        }
        for (var k = 0; k < steps.Count; k++)
        {
            var (a, b) = (planned[k], steps[k].Bucket);
            if (a.Items.Count != b.Items.Count)
            {
                return false;
            }
            for (var i = 0; i < a.Items.Count; i++)
            {
                var (x, y) = (a.Items[i], b.Items[i]);
                if (x.Name != y.Name || x.Offset != y.Offset || x.ByteLength != y.ByteLength || x.DType != y.DType || !x.Shape.SequenceEqual(y.Shape))
                {
                    return false;
                }
            }
        }
        return true;
    }

    /// <summary>Why the worker's declaration of what it keeps does not fit the checkpoint (null when it does, or when it declared nothing).</summary>
    private static string? WantsFailure(WorkerConnection worker, GlobalMetas metas)
    {
        if (worker.WantsError is { } error)
        {
            return error;
        }
        if (worker.Wants is not { } wants)
        {
            return null;
        }
        var tensors = new Dictionary<string, (DType, IReadOnlyList<long>)>(StringComparer.Ordinal);
        foreach (var m in metas.AllTensors)
        {
            tensors.TryAdd(m.Name, (m.DType, m.Shape));
        }
        var problems = wants.Problems(tensors);
        const int Shown = 5;
        return problems.Count == 0 ? null
            : $"the worker of device '{worker.DeviceId}' declared wants that do not fit checkpoint '{metas.Checkpoint}': {string.Join("; ", problems.Take(Shown))}"
              + (problems.Count > Shown ? $" (and {problems.Count - Shown} more)" : "");
    }

    /// <summary>The engine's reply to the trigger comes after its workers finished; a failed trigger fails the update.</summary>
    private static async Task AwaitTriggerAsync(Task triggered, TimeSpan timeout)
    {
        try
        {
            await triggered.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new UpdateFailedException($"the inference engine did not answer the update request within {timeout.TotalSeconds:F0} s");
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new UpdateFailedException($"the inference engine reported a failure: {e.Message}", e);
        }
    }
}
