using System.Diagnostics;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// The bucket loop of an update, the same on every member: staging ahead, the broadcast of each bucket
/// from its stager, the workers' reloads, and the agreement after each (see <see cref="RunAsync"/>).
/// </summary>
internal static class BucketPump
{
    /// <summary>A shard-aware update's parts between hosts: the groups, each bucket's relay (null: the plain way), and this member's proxy parts.</summary>
    /// <param name="Whole">Per class: its workers declared nothing, so its relay carries the whole bucket, from where it lies.</param>
    public sealed record Relaying(RelayGroups Groups, ClassRelay?[] Routes, ProxyPart?[] Proxies, nint ProxyBuffer, IReadOnlyList<bool> Whole)
    {
        /// <summary>Bytes between the proxy buffers of buckets in flight at once (bucket k's is k mod in-flight).</summary>
        public long ProxyStride { get; init; }
    }

    /// <summary>
    /// A shard-aware update on GPUs: each bucket is scattered from its stager, every member receiving only its part (see
    /// <see cref="ICommunicator.ScatterPartsAsync"/>). <paramref name="OneHost"/>: every member is on one host (buckets not relayed are scattered
    /// among all; across hosts they are broadcast, and only a relay's local step scatters). <paramref name="ClassOf"/>: each member's class;
    /// <paramref name="ClassParts"/>: for the buckets this member stages, every class's part (null: a class that declared nothing, which takes
    /// the whole bucket); null for the others.
    /// </summary>
    public sealed record Scattering(bool OneHost, int[] ClassOf, IReadOnlyList<BucketPart?[]?> ClassParts);

    /// <summary>When each stage of one bucket started and ended on this rank (offsets from the update's start), set as the loop runs.</summary>
    private sealed class BucketStamps
    {
        public TimeSpan StageStart { get; set; }

        public TimeSpan StageEnd { get; set; }

        public TimeSpan BroadcastStart { get; set; }

        public TimeSpan BroadcastEnd { get; set; }

        public TimeSpan ReloadStart { get; set; }

        public TimeSpan ReloadEnd { get; set; }

        public BucketTiming Timing(int index, H2DBucket bucket) =>
            new(index, bucket.Owner, bucket.Size, StageStart, StageEnd, BroadcastStart, BroadcastEnd, ReloadStart, ReloadEnd);
    }

    /// <summary>
    /// The bucket loop; returns per-bucket stage times and the bytes this rank gathered into its slots to hand its worker parts of
    /// buckets it holds (in place, or as their stager: the column slices of a worker that does not take strided parts). <paramref name="reloaded"/> hears how many buckets are in the workers.
    /// Each rank stages the buckets it sends into its staging buffers ahead of their turn (all stagers copy at
    /// once), as soon as the reload of the bucket a staging buffer held before is agreed on. Bucket k is
    /// broadcast from its stager's staging buffer into the others' broadcast buffer k mod B; every worker
    /// reloads it from where it lies on its rank, while bucket k+1 is broadcast.
    /// With <paramref name="direct"/> (every member and worker on one host, host backend), nothing is staged or broadcast: every
    /// worker reads bucket k out of its owner's registered memory, and a rank gathers into slot k mod B only the pieces of its
    /// worker's part that are not one run there; reloads and agreements go as before. With a staged <paramref name="direct"/>,
    /// buckets are staged as ever and every worker reads bucket k in its stager's staging buffer (the ranks agree it is staged first).
    /// </summary>
    public static async Task<(List<BucketTiming> Timings, long Gathered)> RunAsync(ICommunicator group, List<BucketStep> steps, BucketSizing sizing, nint device,
        WorkerConnection worker, bool agreeOnStaging, bool verify, IReadOnlyList<BucketPart>? parts, IReadOnlyList<IReadOnlyList<(long Offset, long Length)>?>? wanted,
        Relaying? relay, Scattering? scatter, DirectSources? direct, TimeSpan timeout, Stopwatch clock, Action<int> reloaded, CancellationToken ct)
    {
        var times = steps.Select(_ => new BucketStamps()).ToArray();
        long gathered = 0;
        var own = Enumerable.Range(0, steps.Count).Where(k => direct is not { Staged: false } && steps[k].Stager == group.Rank).ToList();
        var ordinal = new Dictionary<int, int>(own.Select((k, j) => KeyValuePair.Create(k, j)));
        // Where bucket k lies on this rank: its staging buffer if this rank sends it, else a broadcast buffer.
        nint Where(int k) => device + (nint)(ordinal.TryGetValue(k, out var j) ? sizing.StagingOffset(j) : sizing.BroadcastOffset(k));
        // With parts (the worker declared what it keeps), each rank cuts its worker's part out of bucket k into broadcast buffer k mod B
        // (in place on ranks that received it there; the stager's own buffer k mod B is free, as on every rank), and the worker reads only that.
        nint Slot(int k) => device + (nint)sizing.BroadcastOffset(k);
        // A stager that heads its class's relay to other hosts packs its worker's whole part into the slot, as every member of the
        // class holds it; otherwise its worker reads contiguous tensors where they lie in the staging buffer and only the rest is gathered.
        bool ReadsInPlace(int k) => ordinal.ContainsKey(k) && relay?.Routes[k]?.HeadsOwnClass(group.Rank) != true;

        // A staging buffer is free again once the reload of the bucket it held is agreed on.
        var freed = own.Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var staged = new Dictionary<int, Task<string?>>();
        Task previous = Task.CompletedTask;
        for (var j = 0; j < own.Count; j++)
        {
            var (k, before, slotFree) = (own[j], previous, j >= sizing.StagingSlots ? freed[j - sizing.StagingSlots].Task : Task.CompletedTask);
            var task = StageAsync(k, before, slotFree);
            staged[k] = task;
            previous = task;
        }

        async Task<string?> StageAsync(int k, Task before, Task slotFree)
        {
            await before.ConfigureAwait(false); // One staging copy at a time per rank, in schedule order.
            await slotFree.WaitAsync(stop.Token).ConfigureAwait(false);
            times[k].StageStart = clock.Elapsed;
            try
            {
                await steps[k].Stage(Where(k), wanted?[k]).ConfigureAwait(false);
                return null;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                return e.Message; // A failed read or copy: reported at the bucket's turn (P2P: agreed on, so no one waits for its broadcast).
            }
            finally
            {
                times[k].StageEnd = clock.Elapsed;
            }
        }

        // The reload ends when the worker answers (not when the ranks agree on it, which waits for the next broadcast).
        async Task<string?> Reload(int k)
        {
            try
            {
                var wire = (parts, direct) switch
                {
                    (null, null) => Wire(steps[k].Bucket, Where(k) - device, verify),
                    (null, _) => Wire(k, steps[k].Bucket, direct, verify),
                    (_, null) => Wire(parts[k], ReadsInPlace(k), Where(k) - device, Slot(k) - device, verify),
                    _ => Wire(steps[k].Bucket, parts[k], direct, Slot(k) - device, verify),
                };
                return await worker.CallAsync(new LoadMessage(k, wire), timeout, ct).ConfigureAwait(false);
            }
            finally
            {
                times[k].ReloadEnd = clock.Elapsed;
            }
        }

        // This member's part of bucket k from its stager (group rank root in g): the whole bucket if its worker declared nothing.
        Task BroadcastPart(ICommunicator g, int k, int root)
        {
            if (parts is null)
            {
                return g.BroadcastAsync(Where(k), steps[k].Bucket.Size, root, timeout, stop.Token);
            }
            Interlocked.Add(ref gathered, ReadsInPlace(k) ? parts[k].GatheredRuns.Sum(r => r.Length) : 0);
            return g.BroadcastPartAsync(Where(k), steps[k].Bucket.Size, root, ReadsInPlace(k) ? parts[k].GatheredRuns : parts[k].Runs, Slot(k), timeout, stop.Token);
        }

        // Bucket k scattered among g's members (their ranks in the update's group: members), each receiving only its part: the whole bucket
        // where it declared nothing or must take it whole (a proxy). Only the root, the stager, reads the other members' runs.
        Task ScatterPart(ICommunicator g, int k, int root, int[] members, Func<int, bool> whole)
        {
            var runs = whole(group.Rank) || parts is null ? null : ReadsInPlace(k) ? parts[k].GatheredRuns : parts[k].Runs;
            Interlocked.Add(ref gathered, runs is not null && ReadsInPlace(k) ? runs.Sum(r => r.Length) : 0);
            var memberRuns = g.Rank == root && scatter!.ClassParts[k] is { } classParts
                ? members.Select(m => whole(m) ? null : classParts[scatter.ClassOf[m]]?.Runs).ToList()
                : null;
            return g.ScatterPartsAsync(Where(k), steps[k].Bucket.Size, root, runs, memberRuns, Slot(k), timeout, stop.Token);
        }

        // Across hosts: the members on the stager's host take their parts from it (a proxy takes the whole bucket and cuts the parts
        // of the classes it stands for too), then each class relays its part from its head there to its members elsewhere (all
        // classes at once, each over its own group). <paramref name="called"/> hears once this member has called all its collectives
        // of the bucket (those whose data this member sends wait for the local step to end; the others are called at once).
        async Task RelayAsync(int k, ClassRelay route, TaskCompletionSource? called)
        {
            var (me, groups) = (group.Rank, relay!.Groups);
            var proxy = relay.Proxies[k];
            var proxyBuffer = relay.ProxyBuffer + (nint)(k % sizing.InFlight * relay.ProxyStride);
            var relays = groups.Relays(route.Host);
            if (route.Local.Contains(me))
            {
                var local = groups.Local(route.Host);
                var root = Array.IndexOf(route.Local, steps[k].Stager);
                var step = scatter is not null
                    ? ScatterPart(local, k, root, route.Local, m => route.ProxiedBy(m).Any()) // A proxy takes the whole bucket to cut the parts of the classes it stands for.
                    : proxy is null
                        ? BroadcastPart(local, k, root)
                        : local.BroadcastAsync(Where(k), steps[k].Bucket.Size, root, timeout, stop.Token);
                if (proxy is null && relays.Count == 0)
                {
                    called?.TrySetResult();
                }
                await step.ConfigureAwait(false);
                if (proxy is not null)
                {
                    await local.CopyRunsAsync(proxy.Runs, Where(k), proxyBuffer, timeout, stop.Token).ConfigureAwait(false);
                    if (parts is not null)
                    {
                        await local.CopyRunsAsync(ReadsInPlace(k) ? parts[k].GatheredRuns : parts[k].Runs, Where(k), Slot(k), timeout, stop.Token).ConfigureAwait(false);
                    }
                }
            }
            var moving = relays.Select(x =>
            {
                var (r, g) = x;
                var (address, size) = r.Proxy && r.Head == me ? (proxyBuffer + (nint)proxy!.Classes[r.Class].Offset, proxy.Classes[r.Class].Size)
                    : relay.Whole[r.Class] ? (Where(k), steps[k].Bucket.Size) // A class that declared nothing: the bucket, where it lies.
                    : (Slot(k), parts![k].Size);
                return g.BroadcastAsync(address, size, 0, timeout, stop.Token);
            }).ToList();
            called?.TrySetResult();
            await Task.WhenAll(moving).ConfigureAwait(false);
        }

        // A bucket this rank could not copy to its device is still broadcast (its buffer holds stale bytes), so that
        // nobody waits for it; the failure is then reported in the next agreement, and every rank raises it.
        string? stagingFailure = null;

        // Several buckets in flight (relayed ones only: their groups are their stager host's, never the update's group, whose collectives
        // stay in loop order): bucket j moves ahead once its broadcast buffer is free, while the loop still waits for earlier buckets, and
        // once the last move of the same stager host has ended (its groups run one collective at a time). The moves call their collectives
        // in bucket order, the plan's, on every member: a move calls its first once the move before it has called its last (not when they
        // have run), so the NCCL operations of the several groups are submitted in one order everywhere.
        var moves = new Task?[steps.Count];
        var lastOfHost = new Dictionary<int, Task>();
        var calledBefore = Task.CompletedTask;
        bool MovesAhead(int j) => sizing.InFlight > 1 && !agreeOnStaging && direct is null && relay?.Routes[j] is not null;
        void MoveAhead(int j)
        {
            var (host, called) = (relay!.Groups.HostOf[steps[j].Stager], new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
            moves[j] = lastOfHost[host] = MoveAsync(lastOfHost.GetValueOrDefault(host) ?? Task.CompletedTask, calledBefore, called);
            calledBefore = called.Task;

            async Task MoveAsync(Task sameHost, Task calledAhead, TaskCompletionSource called)
            {
                try
                {
                    await sameHost.ConfigureAwait(false);
                    await calledAhead.ConfigureAwait(false);
                    if ((staged.TryGetValue(j, out var stage) ? await stage.ConfigureAwait(false) : null) is { } failure)
                    {
                        Interlocked.CompareExchange(ref stagingFailure, $"copying bucket {j} to its device failed: {failure}", null);
                    }
                    times[j].BroadcastStart = clock.Elapsed;
                    await RelayAsync(j, relay.Routes[j]!, called).ConfigureAwait(false);
                    times[j].BroadcastEnd = clock.Elapsed;
                }
                finally
                {
                    called.TrySetResult(); // Also when this move failed: the update fails, and the moves after it end with their groups.
                }
            }
        }

        // Bucket k from its stager to every member, in loop order: once staged (P2P: agreed on, so no one waits for a broadcast that will
        // not come), read in place, relayed, scattered or broadcast.
        async Task MoveInOrderAsync(int k)
        {
            var failure = staged.TryGetValue(k, out var stage) ? await stage.ConfigureAwait(false) : null;
            if (agreeOnStaging || direct is { Staged: true })
            {
                // Also when workers read the stager's buffer in place: nobody loads bucket k before it is there.
                await Agreement.AgreeAsync(group, failure, $"reading bucket {k} from rank {steps[k].Bucket.Owner} of the owners", timeout, ct).ConfigureAwait(false);
            }
            else if (failure is not null)
            {
                stagingFailure ??= $"copying bucket {k} to its device failed: {failure}";
            }
            times[k].BroadcastStart = clock.Elapsed;
            if (direct is not null)
            {
                if (!direct.Staged && parts?[k].GatheredRuns is { Count: > 0 } runs)
                {
                    var (bucket, slot) = (steps[k].Bucket, Slot(k));
                    Interlocked.Add(ref gathered, runs.Sum(r => r.Length));
                    await Task.Run(() => direct.Gather(bucket, runs, slot), ct).ConfigureAwait(false);
                }
            }
            else if (relay?.Routes[k] is { } route)
            {
                await RelayAsync(k, route, null).ConfigureAwait(false);
            }
            else if (scatter is { OneHost: true })
            {
                await ScatterPart(group, k, steps[k].Stager, [.. Enumerable.Range(0, group.Size)], _ => false).ConfigureAwait(false);
            }
            else
            {
                await BroadcastPart(group, k, steps[k].Stager).ConfigureAwait(false);
            }
            times[k].BroadcastEnd = clock.Elapsed;
        }

        async Task AgreeReloadAsync(Task<string?> reload, int k)
        {
            var failure = await reload.ConfigureAwait(false) ?? stagingFailure;
            await Agreement.AgreeAsync(group, failure, $"reloading bucket {k}", timeout, ct).ConfigureAwait(false);
            if (ordinal.TryGetValue(k, out var j))
            {
                freed[j].TrySetResult();
            }
            reloaded(k + 1);
        }

        try
        {
            Task<string?>? reload = null;
            for (var k = 0; k < steps.Count; k++)
            {
                // The previous reload must be agreed on first when its buffer is needed now: the only broadcast
                // buffer, or the only staging buffer of a stager that sends two buckets in a row. Every rank
                // decides this from the plan alone, so all call their collectives in the same order.
                if (reload is not null && (sizing.BroadcastSlots == 1 || sizing.StagingSlots == 1 && steps[k - 1].Stager == steps[k].Stager))
                {
                    await AgreeReloadAsync(reload, k - 1).ConfigureAwait(false);
                    reload = null;
                }
                // Buckets k .. k + InFlight - 1 may move now: the reloads up to k - 2 are agreed, so their buffers (of InFlight + 1) are free.
                // A bucket that moves in loop order (not relayed) is a barrier: nothing after it moves ahead of it.
                for (var j = k; j < Math.Min(steps.Count, k + sizing.InFlight) && (moves[j] is not null || MovesAhead(j)); j++)
                {
                    if (moves[j] is null)
                    {
                        MoveAhead(j);
                    }
                }
                await (moves[k] ?? MoveInOrderAsync(k)).ConfigureAwait(false);
                Task? agreeing = null;
                if (reload is not null)
                {
                    // In place on one host no buffer waits for the agreement: once its worker has loaded bucket k - 1 without a
                    // fault, a rank hands it bucket k while the ranks agree on k - 1 (a fault elsewhere fails the update one load later).
                    agreeing = AgreeReloadAsync(reload, k - 1);
                    if (direct is not { Staged: false } || await reload.ConfigureAwait(false) is not null || stagingFailure is not null)
                    {
                        await agreeing.ConfigureAwait(false);
                        agreeing = null;
                    }
                }
                times[k].ReloadStart = clock.Elapsed;
                reload = Reload(k);
                if (agreeing is not null)
                {
                    try
                    {
                        await agreeing.ConfigureAwait(false);
                    }
                    catch
                    {
                        // The worker answers the load in flight before it hears of the failure.
                        await reload.ContinueWith(static _ => { }, TaskScheduler.Default).ConfigureAwait(false);
                        throw;
                    }
                }
            }
            if (reload is not null)
            {
                await AgreeReloadAsync(reload, steps.Count - 1).ConfigureAwait(false);
            }
        }
        finally
        {
            // A failed update leaves staging copies waiting for buffers that will not be freed: stop them.
            await stop.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(staged.Values).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
            await Task.WhenAll(moves.OfType<Task>()).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false); // Cut off with the groups.
        }
        return (steps.Select((s, k) => times[k].Timing(k, s.Bucket)).ToList(), gathered);
    }

    /// <summary>The tensors of a worker's part of a bucket, at their offsets in the device buffer; checksums cover whole tensors, so only those carry one.</summary>
    private static List<WireTensor> Wire(BucketPart part, bool holdsBucket, nint bucketOffset, nint slotOffset, bool verify) =>
        part.Tensors.Select(t => new WireTensor(t.Meta.Name, t.Meta.DType.Name(), t.Shape, BucketPart.Place(t, holdsBucket, bucketOffset, slotOffset), t.ByteLength,
            Crc32: verify && t.Slices is null && t.Meta.Crc32 is { } crc ? TensorChecksum.Hex(crc) : null, Part: t.Slices,
            Pitch: holdsBucket ? t.Pitch : null)).ToList();

    /// <summary>
    /// The tensors of a worker's part of a bucket read in place: single runs (and, to a worker that takes them, strided rows) where
    /// they lie in the owner's segment, the rest gathered into the slot.
    /// </summary>
    private static List<WireTensor> Wire(H2DBucket bucket, BucketPart part, DirectSources direct, nint slotOffset, bool verify) =>
        part.Tensors.Select(t =>
        {
            var (segment, offset) = t.Source is { } source ? direct.Locate(-1, bucket, source) : (0, slotOffset + t.Offset);
            return new WireTensor(t.Meta.Name, t.Meta.DType.Name(), t.Shape, offset, t.ByteLength,
                Crc32: verify && t.Slices is null && t.Meta.Crc32 is { } crc ? TensorChecksum.Hex(crc) : null, Part: t.Slices, Segment: segment == 0 ? null : segment,
                Pitch: t.Pitch);
        }).ToList();

    /// <summary>The tensors of bucket <paramref name="k"/> where they lie in the memory the workers map (the owner's registered segments, or the stager's device buffer).</summary>
    private static List<WireTensor> Wire(int k, H2DBucket bucket, DirectSources direct, bool verify) =>
        bucket.Items.Select(m =>
        {
            var (segment, offset) = direct.Locate(k, bucket, m.Offset);
            return new WireTensor(m.Name, m.DType.Name(), [.. m.Shape], offset, m.ByteLength,
                Crc32: verify && m.Crc32 is { } crc ? TensorChecksum.Hex(crc) : null, Segment: segment);
        }).ToList();

    /// <summary>The tensors of a bucket for the worker, at their offsets in the device buffer, with their checksums when verifying.</summary>
    private static List<WireTensor> Wire(H2DBucket bucket, nint slotOffset, bool verify) =>
        bucket.Items.Select(m => new WireTensor(m.Name, m.DType.Name(), [.. m.Shape], slotOffset + m.Offset, m.ByteLength,
            Crc32: verify && m.Crc32 is { } crc ? TensorChecksum.Hex(crc) : null)).ToList();
}
