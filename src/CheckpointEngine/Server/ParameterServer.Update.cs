using System.Diagnostics;
using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>The update: every registered byte goes host → device → every rank → worker, bucket by bucket.</summary>
public sealed partial class ParameterServer
{
    /// <summary>
    /// Pushes checkpoint <paramref name="name"/> into every rank's worker. Every rank calls this.
    /// Buckets rotate through three device buffers (two when memory is short), so the owner's copy of
    /// bucket k+1 to its device, the broadcast of bucket k and the workers' reload of bucket k−1 overlap.
    /// After each bucket the ranks agree whether every worker succeeded; if one failed, all ranks abort
    /// their workers and raise its message. A dead rank or a missed deadline fails the update on every
    /// survivor; the next update starts clean.
    /// </summary>
    /// <param name="trigger">Tells the inference engine to connect its workers (called on every rank, see <see cref="UpdateContext"/>); null when workers connect on their own.</param>
    /// <param name="ranks">null: broadcast to every rank. A subset (P2P) is not available yet.</param>
    public async Task<UpdateReport> UpdateAsync(string name, Func<UpdateContext, CancellationToken, Task>? trigger,
        IReadOnlyList<int>? ranks = null, UpdateOptions? options = null, CancellationToken ct = default)
    {
        options ??= new UpdateOptions();
        if (ranks is not null && !ranks.Order().SequenceEqual(Enumerable.Range(0, World.Size)))
        {
            throw new NotSupportedException("updating a subset of ranks (P2P mode) is not available yet; pass ranks: null");
        }
        if (!await _updating.WaitAsync(0, ct).ConfigureAwait(false))
        {
            throw new InvalidOperationException($"rank {Rank} is already running an update");
        }
        try
        {
            return await RunUpdateAsync(name, trigger, options, ct).ConfigureAwait(false);
        }
        finally
        {
            _updating.Release();
        }
    }

    private async Task<UpdateReport> RunUpdateAsync(string name, Func<UpdateContext, CancellationToken, Task>? trigger, UpdateOptions options, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var group = World.Group;
        var timeout = options.Timeout;
        var metas = GetMetas(name) ?? await GatherMetasAsync(name, timeout, ct).ConfigureAwait(false);
        Registry.TryGet(name, out var local);
        if (metas.Ranks.Count != World.Size)
        {
            throw new UpdateFailedException($"metas of '{name}' are for {metas.Ranks.Count} ranks; this world has {World.Size}");
        }
        if ((local?.TensorCount ?? 0) != metas.Ranks[Rank].Buffers.Sum(b => b.Metas.Count))
        {
            throw new UpdateFailedException($"rank {Rank} holds a different share of '{name}' than its gathered metas say: gather metas again after registering");
        }

        // Bucket size from the smallest free device memory over all ranks.
        var free = (await group.AllReduceAsync([Device.FreeMemory], ReduceOp.Min, timeout, ct).ConfigureAwait(false))[0];
        var sizing = BucketSizing.Plan(free, metas.LargestTensor, metas.Ranks.Max(r => r.TotalBytes), options.MemoryFraction, options.MaxBucketSize);
        var schedule = BucketPlanner.Interleave(metas.Ranks.Select(r => BucketPlanner.Cut(r, sizing.BucketSize)));
        var device = DeviceBufferFor(sizing);

        // Every rank learns every worker's socket; the trigger tells the engine; our worker connects.
        var sockets = (await group.AllGatherAsync(Encoding.UTF8.GetBytes($"{Device.Id}\n{WorkerAddress}"), timeout, ct).ConfigureAwait(false))
            .Select((b, r) => Encoding.UTF8.GetString(b).Split('\n') is [var id, var address] ? new WorkerSocket(r, id, address) : throw new UpdateFailedException($"rank {r} sent a malformed worker address"))
            .ToList();
        using var triggerCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var triggered = trigger is null ? Task.CompletedTask : Task.Run(() => trigger(new UpdateContext(name, Rank, sockets), triggerCts.Token), triggerCts.Token);
        WorkerConnection? worker = null;
        try
        {
            string? failure = null;
            try
            {
                worker = await _worker.AcceptAsync(triggered, timeout, ct).ConfigureAwait(false);
                failure = await worker.CallAsync(new AttachMessage(device.Kind, device.Handle, device.Size, Device.Id), timeout, ct).ConfigureAwait(false);
            }
            catch (UpdateFailedException e)
            {
                failure = e.Message;
            }
            await AgreeAsync(failure, "attaching the worker", timeout, ct).ConfigureAwait(false);

            var timings = await PumpAsync(schedule, sizing, device.Address, local, worker!, options, clock, ct).ConfigureAwait(false);

            await AgreeAsync(await worker!.CallAsync(new ReleaseMessage(), timeout, ct).ConfigureAwait(false), "releasing the buffer", timeout, ct).ConfigureAwait(false);
            await AgreeAsync(await worker.CallAsync(new FinishMessage(), timeout, ct).ConfigureAwait(false), "the post-load hook", timeout, ct).ConfigureAwait(false);
            await AwaitTriggerAsync(triggered, timeout).ConfigureAwait(false);
            var delivered = schedule.Sum(b => b.Items.Sum(i => i.ByteLength));
            return new UpdateReport(name, Rank, sizing.BucketSize, sizing.Slots, delivered, clock.Elapsed, timings);
        }
        catch (Exception e) when (e is UpdateFailedException or CollectiveException)
        {
            if (worker is not null)
            {
                await worker.AbortAsync(e.Message).ConfigureAwait(false);
            }
            await triggerCts.CancelAsync().ConfigureAwait(false);
            throw e as UpdateFailedException ?? new UpdateFailedException($"update of '{name}' failed on rank {Rank}: {e.Message}", e);
        }
        finally
        {
            worker?.Dispose();
        }
    }

    /// <summary>The bucket loop; returns per-bucket stage times.</summary>
    private async Task<List<BucketTiming>> PumpAsync(IReadOnlyList<H2DBucket> schedule, BucketSizing sizing, nint device,
        RegisteredCheckpoint? local, WorkerConnection worker, UpdateOptions options, Stopwatch clock, CancellationToken ct)
    {
        var group = World.Group;
        var timeout = options.Timeout;
        var times = schedule.Select(_ => new TimeSpan[6]).ToArray();
        nint Slot(int k) => device + (nint)(k % sizing.Slots * sizing.BucketSize);

        Task HostToDevice(int k)
        {
            if (k >= schedule.Count || schedule[k].Owner != Rank)
            {
                return Task.CompletedTask;
            }
            return Task.Run(() =>
            {
                times[k][0] = clock.Elapsed;
                foreach (var r in schedule[k].Ranges)
                {
                    Device.CopyHostToDevice(local!.Buffers[r.Buffer].Address + (nint)r.Offset, Slot(k) + (nint)r.BucketOffset, r.Length);
                }
                times[k][1] = clock.Elapsed;
            }, ct);
        }

        var staged = HostToDevice(0);
        Task<string?>? reload = null;
        for (var k = 0; k < schedule.Count; k++)
        {
            var bucket = schedule[k];
            await staged.ConfigureAwait(false);
            times[k][2] = clock.Elapsed;
            var broadcast = group.BroadcastAsync(Slot(k), bucket.Size, bucket.Owner, timeout, ct);
            // With three buffers the next bucket's slot is free already (its last reload was agreed on): stage it now.
            staged = sizing.Slots == 3 ? HostToDevice(k + 1) : Task.CompletedTask;
            await broadcast.ConfigureAwait(false);
            times[k][3] = clock.Elapsed;
            if (reload is not null)
            {
                await AgreeAsync(await reload.ConfigureAwait(false), $"reloading bucket {k - 1}", timeout, ct).ConfigureAwait(false);
                times[k - 1][5] = clock.Elapsed;
            }
            if (sizing.Slots == 2)
            {
                staged = HostToDevice(k + 1); // Its slot held bucket k−1, whose reload is agreed on just now.
            }
            times[k][4] = clock.Elapsed;
            reload = worker.CallAsync(new LoadMessage(k, Wire(bucket, Slot(k) - device)), timeout, ct);
        }
        if (reload is not null)
        {
            await AgreeAsync(await reload.ConfigureAwait(false), $"reloading bucket {schedule.Count - 1}", timeout, ct).ConfigureAwait(false);
            times[^1][5] = clock.Elapsed;
        }
        return schedule.Select((b, k) => new BucketTiming(k, b.Owner, b.Size, times[k][0], times[k][1], times[k][2], times[k][3], times[k][4], times[k][5])).ToList();
    }

    /// <summary>The tensors of a bucket for the worker, at their offsets in the device buffer.</summary>
    private static List<WireTensor> Wire(H2DBucket bucket, nint slotOffset) =>
        bucket.Items.Select(m => new WireTensor(m.Name, m.DType.Name(), [.. m.Shape], slotOffset + m.Offset, m.ByteLength)).ToList();

    /// <summary>
    /// All ranks share whether their worker succeeded at a step; if any failed, every rank raises the
    /// first failing worker's message (so all ranks report the same cause).
    /// </summary>
    private async Task AgreeAsync(string? failure, string step, TimeSpan timeout, CancellationToken ct)
    {
        var all = await World.Group.AllGatherAsync(Encoding.UTF8.GetBytes(failure ?? ""), timeout, ct).ConfigureAwait(false);
        for (var r = 0; r < all.Length; r++)
        {
            if (all[r].Length > 0)
            {
                throw new UpdateFailedException($"worker of rank {r} failed at {step}: {Encoding.UTF8.GetString(all[r])}");
            }
        }
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
