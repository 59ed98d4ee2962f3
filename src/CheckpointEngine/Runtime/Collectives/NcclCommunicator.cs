using System.Diagnostics;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Interop.Nccl;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// Collectives for GPU memory: broadcast and all-reduce through NCCL on the communicator's own CUDA
/// stream, control collectives (barrier, all-gather) through the built-in group it wraps. NCCL runs
/// non-blocking and every wait polls with the call's deadline, the world's broken flag and the
/// cancellation: a dead or silent peer aborts the NCCL communicator (its kernels stop) and fails the
/// call naming the operation, instead of hanging a GPU stream forever.
/// </summary>
public sealed class NcclCommunicator : ICommunicator
{
    private readonly ICommunicator _control;
    private readonly bool _ownsControl;
    private readonly World _world;
    private readonly CudaDevice _device;
    private readonly Nccl _nccl;
    private readonly CudaDriver _cuda;
    private readonly nint _comm;
    private readonly nint _stream;
    private readonly nint _done;
    private readonly SemaphoreSlim _one = new(1, 1);
    private ulong _scratch;
    private long _scratchSize;
    private ulong _cutScratch;
    private ulong _packed;
    private long _packedSize;
    private long _received;
    private string? _failure;
    private int _disposed;

    private NcclCommunicator(ICommunicator control, bool ownsControl, World world, CudaDevice device, Nccl nccl, nint comm, nint stream, nint done)
    {
        _control = control;
        _ownsControl = ownsControl;
        _world = world;
        _device = device;
        _nccl = nccl;
        _cuda = CudaDriver.Instance;
        _comm = comm;
        _stream = stream;
        _done = done;
    }

    public string Name => _control.Name;

    public int Rank => _control.Rank;

    public int Size => _control.Size;

    public IReadOnlyList<int> Members => _control.Members;

    /// <summary>
    /// Creates the NCCL communicator of <paramref name="control"/>'s members on <paramref name="device"/>:
    /// group rank 0 makes the unique id and the members share it through <paramref name="control"/>. Every
    /// member calls this. The new communicator owns <paramref name="control"/> when <paramref name="ownsControl"/>.
    /// </summary>
    /// <exception cref="Interop.BackendUnavailableException">No NCCL on this machine.</exception>
    public static async Task<NcclCommunicator> CreateAsync(ICommunicator control, World world, CudaDevice device, TimeSpan timeout,
        bool ownsControl = false, CancellationToken ct = default)
    {
        var nccl = Nccl.Instance;
        var cuda = CudaDriver.Instance;
        var operation = $"NCCL init (rank {control.Rank} of {control.Size}, NCCL {nccl.Version})";
        nint stream = 0, done = 0, comm = 0;
        try
        {
            var mine = control.Rank == 0 ? nccl.UniqueId().ToArray() : [];
            var ids = await control.AllGatherAsync(mine, timeout, ct).ConfigureAwait(false);
            var id = NcclUniqueId.From(ids[0]);
            cuda.SetCurrent(device.Context);
            stream = cuda.CreateStream();
            done = cuda.CreateEvent();
            comm = nccl.StartInit(control.Size, id, control.Rank);
            await PollAsync(() => StateDone(nccl, comm), operation, control.Name, world, timeout, ct).ConfigureAwait(false);
            return new NcclCommunicator(control, ownsControl, world, device, nccl, comm, stream, done);
        }
        catch (Exception e)
        {
            if (comm != 0)
            {
                nccl.Abort(comm);
            }
            cuda.SetCurrent(device.Context);
            if (done != 0)
            {
                cuda.DestroyEvent(done);
            }
            if (stream != 0)
            {
                cuda.DestroyStream(stream);
            }
            if (ownsControl)
            {
                control.Dispose();
            }
            if (e is NcclException or CudaException)
            {
                throw new CollectiveException(operation, control.Name, [], e.Message, e);
            }
            throw;
        }
    }

    /// <summary>True once the communicator's pending call has finished; throws <see cref="NcclException"/> if it failed.</summary>
    private static bool StateDone(Nccl nccl, nint comm)
    {
        var state = nccl.AsyncError(comm);
        if (state == Nccl.InProgress)
        {
            return false;
        }
        nccl.Check(state, "NCCL (asynchronous error)", comm);
        return true;
    }

    public Task BarrierAsync(TimeSpan timeout, CancellationToken ct = default) => _control.BarrierAsync(timeout, ct);

    public Task<byte[][]> AllGatherAsync(byte[] blob, TimeSpan timeout, CancellationToken ct = default) => _control.AllGatherAsync(blob, timeout, ct);

    /// <summary>Broadcasts device memory from group rank <paramref name="root"/>; returns when the bytes are in this rank's buffer.</summary>
    public Task BroadcastAsync(nint buffer, long length, int root, TimeSpan timeout, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (root < 0 || root >= Size)
        {
            throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is not a rank of group '{Name}' (size {Size})");
        }
        return RunAsync($"broadcast of {length} bytes from rank {Members[root]}", timeout,
            () => _nccl.Broadcast(buffer, length, root, _comm, _stream), ct, Rank == root ? 0 : length);
    }

    public long BytesReceived => Interlocked.Read(ref _received);

    /// <summary>The bytes a part fills packed: up to the end of its last run.</summary>
    public static long PackedSize(IReadOnlyList<CheckpointEngine.Memory.ByteRun> runs) => runs.Count == 0 ? 0 : runs.Max(r => r.Destination + r.Length);

    /// <summary>
    /// The scatter inside a node: the root packs each member's part on its device (strided copies, as <see cref="CopyRunsAsync"/> cuts) into a
    /// staging area kept from bucket to bucket (grown only when a bucket needs more) and sends it with <c>ncclSend</c>; a part that is one run
    /// of the bucket, or the whole bucket, goes straight from the bucket. Each member receives its part with <c>ncclRecv</c> straight into
    /// <paramref name="destination"/>; all in one <c>ncclGroupStart</c>/<c>ncclGroupEnd</c>, after the root's copies on the stream. The root
    /// cuts its own part as before. Empty parts are sent and received too (NCCL passes over them), so that every member submits one operation per
    /// scatter. Deadlines, abort and errors as for every collective.
    /// </summary>
    public Task ScatterPartsAsync(nint buffer, long length, int root, IReadOnlyList<CheckpointEngine.Memory.ByteRun>? runs,
        IReadOnlyList<IReadOnlyList<CheckpointEngine.Memory.ByteRun>?>? memberRuns, nint destination, TimeSpan timeout, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (root < 0 || root >= Size)
        {
            throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is not a rank of group '{Name}' (size {Size})");
        }
        if (Rank != root)
        {
            var (into, bytes) = runs is null ? (buffer, length) : (destination, PackedSize(runs));
            return RunAsync($"scatter of a {length}-byte bucket from rank {Members[root]} (receiving {bytes} bytes)", timeout, () =>
            {
                _nccl.GroupStart();
                try
                {
                    _nccl.Receive(into, bytes, root, _comm, _stream); // Empty parts too: every member submits one operation per scatter.
                }
                catch
                {
                    _ = _nccl.GroupEnd(_comm);
                    throw;
                }
                return _nccl.GroupEnd(_comm);
            }, ct, bytes);
        }
        if (memberRuns is null || memberRuns.Count != Size)
        {
            throw new ArgumentException($"the root of a scatter in group '{Name}' needs the runs of all {Size} members, got {memberRuns?.Count.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"}", nameof(memberRuns));
        }
        // Each member's part: from the bucket where it is one run from its start (or the whole bucket), else packed in the staging area.
        var sends = new List<(int Peer, nint From, long Bytes, IReadOnlyList<CheckpointEngine.Memory.ByteRun>? Pack, long At)>();
        long staging = 0;
        for (var r = 0; r < Size; r++)
        {
            if (r == root)
            {
                continue;
            }
            switch (memberRuns[r])
            {
                case null:
                    sends.Add((r, buffer, length, null, 0));
                    break;
                case [var one] when one.Destination == 0:
                    sends.Add((r, buffer + (nint)one.Source, one.Length, null, 0));
                    break;
                case var part:
                    var at = CheckpointEngine.Planning.BucketSizing.Align(staging);
                    sends.Add((r, 0, PackedSize(part), part, at));
                    staging = at + PackedSize(part);
                    break;
            }
        }
        return RunAsync($"scatter of a {length}-byte bucket from rank {Members[root]} (sending {sends.Sum(x => x.Bytes)} bytes to {sends.Count} members)", timeout, () =>
        {
            if (staging > _packedSize)
            {
                if (_packed != 0)
                {
                    _cuda.Free(_packed);
                    (_packed, _packedSize) = (0, 0);
                }
                _packed = _cuda.Allocate(staging);
                _packedSize = staging;
            }
            foreach (var (_, _, _, pack, at) in sends.Where(x => x.Pack is not null))
            {
                Cut(pack!, buffer, (nint)(_packed + (ulong)at));
            }
            if (runs is not null)
            {
                Cut(runs, buffer, destination);
            }
            _nccl.GroupStart();
            try
            {
                foreach (var (peer, from, bytes, pack, at) in sends)
                {
                    // An empty part from the bucket's address: never a null buffer (older NCCL took a null one for the other direction).
                    _nccl.Send(pack is null ? from : bytes == 0 ? buffer : (nint)(_packed + (ulong)at), bytes, peer, _comm, _stream);
                }
            }
            catch
            {
                _ = _nccl.GroupEnd(_comm);
                throw;
            }
            return _nccl.GroupEnd(_comm);
        }, ct);
    }

    /// <summary>The broadcast, then this member's runs cut out of it on the device (see <see cref="CopyRunsAsync"/>).</summary>
    public async Task BroadcastPartAsync(nint buffer, long length, int root, IReadOnlyList<CheckpointEngine.Memory.ByteRun> runs, nint destination,
        TimeSpan timeout, CancellationToken ct = default)
    {
        await BroadcastAsync(buffer, length, root, timeout, ct).ConfigureAwait(false);
        await CopyRunsAsync(runs, buffer, destination, timeout, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Copies runs within device memory on the communicator's stream, after what it queued before: the rows of a column slice as one
    /// strided copy (row by row where the driver refuses the pitches), and copies whose source and destination overlap (a part cut
    /// in place) through a scratch buffer, a piece at a time.
    /// </summary>
    public Task CopyRunsAsync(IReadOnlyList<CheckpointEngine.Memory.ByteRun> runs, nint source, nint destination, TimeSpan timeout, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(runs);
        return RunAsync($"copying {runs.Count} runs on the device", timeout, () =>
        {
            Cut(runs, source, destination);
            return Nccl.Success;
        }, ct);
    }

    /// <summary>Queues the copies of <paramref name="runs"/> on the stream: strided where they fold, through the scratch buffer where a cut in place overlaps itself.</summary>
    private void Cut(IReadOnlyList<CheckpointEngine.Memory.ByteRun> runs, nint source, nint destination)
    {
        foreach (var run in CheckpointEngine.Memory.StridedRun.Fold(runs))
        {
            if (source == destination && run.Overlaps)
            {
                CopyThroughScratch(run, (ulong)source);
            }
            else
            {
                Copy(run, (ulong)source, (ulong)destination);
            }
        }
    }

    /// <summary>Scratch for cutting parts in place: copies that overlap go through it this many bytes at a time.</summary>
    private const long CutScratchBytes = 64 << 20;

    private void Copy(CheckpointEngine.Memory.StridedRun run, ulong source, ulong destination)
    {
        var (from, to) = (source + (ulong)run.Source, destination + (ulong)run.Destination);
        if (run.Rows > 1 && _cuda.TryCopy2DDeviceToDeviceAsync(to, run.DestinationPitch, from, run.SourcePitch, run.Width, run.Rows, _stream) == 0)
        {
            return;
        }
        for (long r = 0; r < run.Rows; r++)
        {
            _cuda.CopyDeviceToDeviceAsync(to + (ulong)(r * run.DestinationPitch), from + (ulong)(r * run.SourcePitch), run.Width, _stream);
        }
    }

    /// <summary>
    /// A strided run whose source and destination overlap, in pieces through the scratch buffer: each piece is read whole before it is
    /// written, and since runs land at or before their source, no piece overwrites bytes a later one still reads.
    /// </summary>
    private void CopyThroughScratch(CheckpointEngine.Memory.StridedRun run, ulong buffer)
    {
        if (_cutScratch == 0)
        {
            _cutScratch = _cuda.Allocate(CutScratchBytes);
        }
        if (run.Width > CutScratchBytes)
        {
            for (long r = 0; r < run.Rows; r++)
            {
                for (long at = 0; at < run.Width; at += CutScratchBytes)
                {
                    var n = Math.Min(CutScratchBytes, run.Width - at);
                    _cuda.CopyDeviceToDeviceAsync(_cutScratch, buffer + (ulong)(run.Source + r * run.SourcePitch + at), n, _stream);
                    _cuda.CopyDeviceToDeviceAsync(buffer + (ulong)(run.Destination + r * run.DestinationPitch + at), _cutScratch, n, _stream);
                }
            }
            return;
        }
        var rows = CutScratchBytes / run.Width;
        for (long r = 0; r < run.Rows; r += rows)
        {
            var piece = run with { Source = run.Source + r * run.SourcePitch, Destination = run.Destination + r * run.DestinationPitch, Rows = Math.Min(rows, run.Rows - r) };
            Copy(piece with { Destination = 0, DestinationPitch = run.Width }, buffer, _cutScratch);
            Copy(piece with { Source = 0, SourcePitch = run.Width }, _cutScratch, buffer);
        }
    }

    /// <summary>All-reduce of 64-bit integers through a small device buffer.</summary>
    public async Task<long[]> AllReduceAsync(long[] values, ReduceOp op, TimeSpan timeout, CancellationToken ct = default)
    {
        var bytes = values.Length * 8L;
        if (_scratchSize < bytes)
        {
            _cuda.SetCurrent(_device.Context);
            if (_scratch != 0)
            {
                _cuda.Free(_scratch);
            }
            _scratchSize = Math.Max(bytes, 4096);
            _scratch = _cuda.Allocate(_scratchSize);
        }
        var result = new long[values.Length];
        var nop = op switch
        {
            ReduceOp.Sum => Nccl.Sum,
            ReduceOp.Min => Nccl.Min,
            ReduceOp.Max => Nccl.Max,
            _ => throw new ArgumentOutOfRangeException(nameof(op)),
        };
        var scratch = _scratch;
        await RunAsync($"all-reduce ({op})", timeout, () =>
        {
            unsafe
            {
                fixed (long* p = values)
                {
                    // On the communicator's stream, so the all-reduce queued after it reads the copied values: a
                    // plain copy runs on the legacy stream, which a non-blocking stream does not wait for.
                    // From pageable memory the call returns once the bytes are staged, so the pin may end here.
                    _cuda.CopyHostToDeviceAsync(scratch, (nint)p, bytes, _stream);
                }
            }
            return _nccl.AllReduce((nint)scratch, values.Length, Nccl.Int64, nop, _comm, _stream);
        }, ct).ConfigureAwait(false);
        _cuda.SetCurrent(_device.Context);
        unsafe
        {
            fixed (long* p = result)
            {
                _cuda.CopyDeviceToHost((nint)p, scratch, bytes); // The all-reduce has run: its event on the stream completed.
            }
        }
        return result;
    }

    /// <summary>
    /// Where the next NCCL operation on a device may be submitted: after every operation called before it on that device, in any of its
    /// communicators. NCCL asks that operations on several communicators be submitted in one order on every rank (an order that differs
    /// between ranks can deadlock the GPUs); callers that call them in one order (the bucket loop: the plan's) thus submit them so.
    /// </summary>
    private sealed class SubmissionOrder
    {
        private readonly Lock _lock = new();
        private Task _last = Task.CompletedTask;

        /// <summary>The submission before the caller's, and the caller's own turn, to complete once it submitted (or gave up).</summary>
        public (Task Before, TaskCompletionSource Mine) Take()
        {
            var mine = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_lock)
            {
                var before = _last;
                _last = mine.Task;
                return (before, mine);
            }
        }
    }

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<CudaDevice, SubmissionOrder> Submissions = new();

    /// <summary>
    /// Queues one NCCL operation on the stream, in its turn on the device (see <see cref="SubmissionOrder"/>), and waits, with the
    /// deadline, until it has run. The turn passes on once the operation is queued, not when it has run.
    /// </summary>
    private async Task RunAsync(string operation, TimeSpan timeout, Func<int> enqueue, CancellationToken ct, long received = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (_failure is not null)
        {
            throw new CollectiveException(operation, Name, [], $"the group is unusable after an earlier failure: {_failure}");
        }
        var (before, turn) = Submissions.GetOrCreateValue(_device).Take();
        var holding = false;
        try
        {
            try
            {
                await before.WaitAsync(timeout, ct).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                throw new CollectiveException(operation, Name, [], $"an NCCL operation called before it on this device was not submitted within {timeout.TotalSeconds:F1} s");
            }
            if (!await _one.WaitAsync(timeout, ct).ConfigureAwait(false))
            {
                throw new CollectiveException(operation, Name, [], $"an earlier collective of this group still runs after {timeout.TotalSeconds:F1} s");
            }
            holding = true;
            _cuda.SetCurrent(_device.Context);
            var state = enqueue();
            turn.TrySetResult();
            if (state == Nccl.InProgress)
            {
                await PollAsync(() => StateDone(_nccl, _comm), operation, Name, _world, timeout, ct).ConfigureAwait(false);
            }
            _cuda.SetCurrent(_device.Context); // The poll may have moved this call to another thread: contexts are per thread.
            _cuda.Record(_done, _stream);
            await PollAsync(() => Finished(), operation, Name, _world, timeout, ct).ConfigureAwait(false);
            Interlocked.Add(ref _received, received);
        }
        catch (Exception e) when (e is CollectiveException or NcclException or CudaException or OperationCanceledException)
        {
            // The peers may be gone or wedged: stop our kernels so the stream and the buffers are free again. An operation that was never
            // submitted leaves the group out of step with its peers, which may have submitted theirs: unusable too.
            _failure ??= $"{operation}: {e.Message}";
            _nccl.Abort(_comm);
            throw e as CollectiveException ?? new CollectiveException(operation, Name, [], e.Message, e);
        }
        finally
        {
            turn.TrySetResult();
            if (holding)
            {
                _one.Release();
            }
        }
    }

    private bool Finished()
    {
        _cuda.SetCurrent(_device.Context);
        if (_nccl.AsyncError(_comm) is var state && state != Nccl.Success && state != Nccl.InProgress)
        {
            _nccl.Check(state, "NCCL operation", _comm);
        }
        return _cuda.IsDone(_done);
    }

    /// <summary>Polls <paramref name="done"/> (spinning briefly, then every millisecond) until it holds, the deadline passes, the world breaks or the caller cancels.</summary>
    private static async Task PollAsync(Func<bool> done, string operation, string group, World world, TimeSpan timeout, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        for (var spins = 0; !done(); spins++)
        {
            ct.ThrowIfCancellationRequested();
            if (world.Broken.IsCancellationRequested)
            {
                throw new CollectiveException(operation, group, [], world.BrokenReason ?? "the world is broken");
            }
            if (Stopwatch.GetElapsedTime(started) > timeout)
            {
                throw new CollectiveException(operation, group, [], $"did not complete within the {timeout.TotalSeconds:F1} s deadline (a peer is missing or stuck)");
            }
            if (spins < 64)
            {
                Thread.Yield();
            }
            else
            {
                await Task.Delay(1, ct).ConfigureAwait(false);
            }
        }
    }

    public async Task<ICommunicator> CreateSubGroupAsync(string name, IReadOnlyList<int> groupRanks, TimeSpan timeout, CancellationToken ct = default)
    {
        var control = await _control.CreateSubGroupAsync(name, groupRanks, timeout, ct).ConfigureAwait(false);
        return await CreateAsync(control, _world, _device, timeout, ownsControl: true, ct).ConfigureAwait(false);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _cuda.SetCurrent(_device.Context);
        if (_failure is null)
        {
            try
            {
                _nccl.Destroy(_comm);
            }
            catch (NcclException)
            {
                _nccl.Abort(_comm);
            }
        }
        if (_cutScratch != 0)
        {
            _cuda.Free(_cutScratch);
        }
        if (_packed != 0)
        {
            _cuda.Free(_packed);
        }
        if (_scratch != 0)
        {
            _cuda.Free(_scratch);
        }
        _cuda.DestroyEvent(_done);
        _cuda.DestroyStream(_stream);
        if (_ownsControl)
        {
            _control.Dispose();
        }
        _one.Dispose();
    }
}
