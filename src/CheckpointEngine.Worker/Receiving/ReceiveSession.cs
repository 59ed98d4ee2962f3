using System.Diagnostics;
using System.Net.Sockets;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>
/// One update on one connection: the protocol's state machine (attach, load×N, release, finish; abort
/// at any point), message validation, and the mapping of the device buffer while attached.
/// </summary>
internal sealed class ReceiveSession : IDisposable
{
    private enum Phase
    {
        Connected,
        Attached,
        Released,
    }

    private readonly string _address;
    private readonly NetworkStream _stream;
    private readonly BucketHandler _onBucket;
    private readonly Func<CancellationToken, ValueTask>? _postLoad;
    private readonly TimeSpan _idle;
    private readonly long _started = Stopwatch.GetTimestamp();

    private Phase _phase;
    private SharedMemorySegment? _segment;
    private SharedMemorySegment[] _registered = [];
    private CudaIpcMapping? _cudaBuffer;
    private string _deviceId = "";
    private int _buckets;
    private int _tensors;
    private long _bytes;
    private int _lastBucket = -1;

    /// <summary>The attach said this session only prepares: it ends at "release", and takes no load.</summary>
    private bool _preparing;

    /// <summary>Set once a reply said "not ok": from then on the update can only end in failure.</summary>
    private WeightReceiveException? _failure;

    public ReceiveSession(string address, Socket socket, BucketHandler onBucket, Func<CancellationToken, ValueTask>? postLoad, TimeSpan idle)
    {
        _address = address;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _onBucket = onBucket;
        _postLoad = postLoad;
        _idle = idle;
    }

    /// <summary>Checks who listens, presents the session key (and what this worker keeps), then serves the update.</summary>
    public async Task<ReceiveSummary> RunAsync(string session, WorkerWants? wants, CancellationToken ct)
    {
        if (PeerCredentials.Refusal(_stream.Socket, $"the process listening at {_address}") is { } refusal)
        {
            throw new WeightReceiveException(refusal + " (is another user's process squatting this device's socket name?)");
        }
        await WriteAsync(new WorkerHello(session, wants is not null, Segments: Arrived is null, Strided: TakesStrided, Prepares: true), "the session key", ct).ConfigureAwait(false);
        if (wants is not null)
        {
            await WriteRawAsync(WorkerFraming.Frame(wants.ToJson()), "the wants", ct).ConfigureAwait(false);
        }
        while (true)
        {
            var wait = _failure is null ? _idle : (_idle < WeightReceiver.AbortWait ? _idle : WeightReceiver.AbortWait);
            var frame = await ReadFrameAsync(wait, ct).ConfigureAwait(false);
            if (frame is null)
            {
                throw _failure ?? new WeightReceiveException($"the parameter server at {_address} closed the connection {Where()}");
            }
            WorkerMessage message;
            try
            {
                message = WorkerFraming.Decode<WorkerMessage>(frame);
            }
            catch (InvalidDataException e)
            {
                await FailAsync($"bad message {Where()}: {e.Message}", e, ct).ConfigureAwait(false);
                continue;
            }
            if (_failure is not null)
            {
                if (message is AbortMessage)
                {
                    Drop();
                    await ReplyAsync(WorkerReply.Success, ct).ConfigureAwait(false);
                    throw _failure;
                }
                await ReplyAsync(new WorkerReply(false, $"{Name(message)} after a failure: {_failure.Message}"), ct).ConfigureAwait(false);
                continue;
            }
            switch (message)
            {
                case AbortMessage abort:
                    Drop();
                    try
                    {
                        await ReplyAsync(WorkerReply.Success, ct).ConfigureAwait(false);
                    }
                    catch (WeightReceiveException)
                    {
                        // A server that aborts and leaves at once: the abort is still the news.
                    }
                    throw new WeightUpdateAbortedException(abort.Reason);
                case AttachMessage attach when _phase == Phase.Connected:
                    await AttachAsync(attach, ct).ConfigureAwait(false);
                    break;
                case LoadMessage when _phase == Phase.Attached && _preparing:
                    await FailAsync("'load' in a session that only prepares (its attach said \"prepare\")", null, ct).ConfigureAwait(false);
                    break;
                case LoadMessage load when _phase == Phase.Attached:
                    await LoadAsync(load, ct).ConfigureAwait(false);
                    break;
                case ReleaseMessage when _phase == Phase.Attached:
                    Unmap();
                    _phase = Phase.Released;
                    await ReplyAsync(WorkerReply.Success, ct).ConfigureAwait(false);
                    if (_preparing)
                    {
                        return new ReceiveSummary(_deviceId, 0, 0, 0, Stopwatch.GetElapsedTime(_started));
                    }
                    break;
                case FinishMessage when _phase == Phase.Released:
                    if (await FinishAsync(ct).ConfigureAwait(false))
                    {
                        return new ReceiveSummary(_deviceId, _buckets, _tensors, _bytes, Stopwatch.GetElapsedTime(_started));
                    }
                    break;
                default:
                    await FailAsync($"'{Name(message)}' out of order {Where()}: expected {Expected()} (or abort)", null, ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    private async Task AttachAsync(AttachMessage attach, CancellationToken ct)
    {
        if (attach.Kind is not ("shm" or "cuda-ipc"))
        {
            await FailAsync($"attach: segment kind '{attach.Kind}' is not supported by this worker (it maps 'shm' and 'cuda-ipc')", null, ct).ConfigureAwait(false);
            return;
        }
        if (attach.Size <= 0)
        {
            await FailAsync($"attach: segment '{attach.Handle}' has size {attach.Size}; it must be positive", null, ct).ConfigureAwait(false);
            return;
        }
        if (attach.Segments is { Count: > 0 } extra && (attach.Kind != "shm" || extra.Any(r => r is null || r.Size <= 0)))
        {
            await FailAsync(attach.Kind != "shm"
                ? $"attach: further segments come only with a 'shm' buffer, not '{attach.Kind}'"
                : $"attach: every further segment needs a name and a positive size, got [{string.Join(", ", extra.Select(r => $"'{r?.Handle}' of {r?.Size}"))}]", null, ct).ConfigureAwait(false);
            return;
        }
        try
        {
            if (attach.Kind == "shm")
            {
                (_segment, _registered) = SegmentMappings.Acquire(_address, attach.Handle, attach.Size, attach.Segments ?? []);
                if (attach.Prepare && attach.Prefault)
                {
                    // Loads will read the owners' segments in place: fault in now their pages that hold data (a hole stays one: reading
                    // it would allocate memory nobody writes).
                    foreach (var s in _registered.Distinct())
                    {
                        _ = s.PrefaultResident();
                    }
                }
            }
            else
            {
                _cudaBuffer = new CudaIpcMapping(attach.DeviceId, attach.Handle, attach.Size);
            }
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException or InvalidOperationException
            or Interop.BackendUnavailableException or Interop.Cuda.CudaException)
        {
            var what = attach.Kind == "shm" ? $"shared memory segment '{attach.Handle}'" : $"the CUDA IPC buffer of device {attach.DeviceId}";
            await FailAsync($"attach: cannot map {what} of {attach.Size} bytes: {e.Message}", e, ct).ConfigureAwait(false);
            return;
        }
        _deviceId = attach.DeviceId;
        _preparing = attach.Prepare;
        _phase = Phase.Attached;
        await ReplyAsync(WorkerReply.Success, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Fault injection: sees each bucket's views before they are checked (see <see cref="WeightReceiver"/>). A receiver with one may
    /// write into the views, so it does not offer to map the owners' memory (read-only): it gets the staged copies.
    /// </summary>
    public BucketHandler? Arrived { get; init; }

    /// <summary>The handler takes parts in place (see <see cref="ReceivedTensor.IsPacked"/>); not with <see cref="Arrived"/>, which gets no owners' memory.</summary>
    public bool Strided { get; init; }

    private bool TakesStrided => Strided && Arrived is null;

    private async Task LoadAsync(LoadMessage load, CancellationToken ct)
    {
        var valid = TryViews(load, out var views, out var error);
        if (valid)
        {
            Arrived?.Invoke(load.Bucket, views);
        }
        if (!valid || !TryVerify(load, views, out error))
        {
            await FailAsync(error, null, ct).ConfigureAwait(false);
            return;
        }
        try
        {
            if (_cudaBuffer is not null)
            {
                Interop.Cuda.CudaDriver.Instance.SetCurrent(_cudaBuffer.Context); // The handler may launch work on the device.
            }
            _onBucket(load.Bucket, views);
        }
        catch (Exception e)
        {
            await FailAsync(e.Message, e, ct).ConfigureAwait(false);
            return;
        }
        _buckets++;
        _tensors += views.Length;
        foreach (var v in views)
        {
            _bytes += v.Length;
        }
        _lastBucket = load.Bucket;
        await ReplyAsync(WorkerReply.Success, ct).ConfigureAwait(false);
    }

    /// <returns>True when the hook ran and the update is complete.</returns>
    private async Task<bool> FinishAsync(CancellationToken ct)
    {
        if (_postLoad is not null)
        {
            try
            {
                await _postLoad(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                throw;
            }
            catch (Exception e)
            {
                await FailAsync($"post-load hook: {e.Message}", e, ct).ConfigureAwait(false);
                return false;
            }
        }
        await ReplyAsync(WorkerReply.Success, ct).ConfigureAwait(false);
        return true;
    }

    /// <summary>Checks every tensor against the segment and the dtype rules, then makes its view.</summary>
    private unsafe bool TryViews(LoadMessage load, out ReceivedTensor[] views, out string error)
    {
        views = [];
        var context = _segment is null ? _cudaBuffer!.Context : 0;
        var at = $"load of bucket {load.Bucket}";
        if (load.Bucket < 0)
        {
            error = $"{at}: bucket index must not be negative";
            return false;
        }
        var result = new ReceivedTensor[load.Tensors.Count];
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < result.Length; i++)
        {
            var t = load.Tensors[i];
            if (t is null)
            {
                error = $"{at}: tensor #{i} is null";
                return false;
            }
            var what = $"{at}: tensor '{t.Name}' (#{i})";
            if (t.Name.Length == 0)
            {
                error = $"{at}: tensor #{i} has an empty name";
                return false;
            }
            if (!names.Add(t.Name))
            {
                error = $"{what} appears twice in the bucket";
                return false;
            }
            if (!DTypes.TryParse(t.DType, out var dtype))
            {
                error = $"{what} has unknown dtype '{t.DType}'";
                return false;
            }
            if (!dtype.TryByteLength(t.Shape, out var expected, out var why))
            {
                error = $"{what}: {why}";
                return false;
            }
            if (t.NBytes != expected)
            {
                error = $"{what}: nbytes is {t.NBytes}, dtype {dtype.Name()} and shape [{string.Join(", ", t.Shape)}] need {expected}";
                return false;
            }
            if (t.Segment is { } index && (index < 0 || index > _registered.Length))
            {
                error = $"{what}: segment {index} was not attached (this update attached {_registered.Length + 1})";
                return false;
            }
            var segment = t.Segment is > 0 ? _registered[t.Segment.Value - 1] : _segment;
            var name = segment?.Name ?? _cudaBuffer!.Name;
            var size = segment?.Size ?? _cudaBuffer!.Size;
            var pointer = segment is null ? _cudaBuffer!.Pointer : segment.Pointer;
            if (t.Part is { } part && PartProblem(part, dtype, t.Shape) is { } wrong)
            {
                error = $"{what}: {wrong}";
                return false;
            }
            var (rows, extent) = (1L, t.NBytes);
            if (t.Pitch is { } pitch && StridedProblem(t, pitch, segment is null, out rows, out extent) is { } bad)
            {
                error = $"{what}: {bad}";
                return false;
            }
            if (t.Offset < 0 || t.Offset > size - extent)
            {
                error = t.Pitch is { } p && extent != t.NBytes
                    ? $"{what}: bytes [{t.Offset}, {t.Offset + extent}) ({rows} rows of {t.NBytes / rows} bytes, {p} bytes apart) are outside segment '{name}' of {size} bytes"
                    : $"{what}: bytes [{t.Offset}, {t.Offset + t.NBytes}) are outside segment '{name}' of {size} bytes";
                return false;
            }
            if (t.Sha256 is { } sum && (sum.Length != 64 || !sum.All(char.IsAsciiHexDigit)))
            {
                error = $"{what}: sha256 '{sum}' is not 64 hex digits";
                return false;
            }
            if (t.Crc32 is { } crc && !TensorChecksum.TryParseHex(crc, out _))
            {
                error = $"{what}: crc32 '{crc}' is not 8 hex digits";
                return false;
            }
            result[i] = new ReceivedTensor(t.Name, dtype, [.. t.Shape], t.Offset, t.NBytes, pointer + t.Offset, context, t.Part, rows, t.Pitch ?? 0);
        }
        views = result;
        error = "";
        return true;
    }

    /// <summary>Why a part does not describe slices of its full shape packed into <paramref name="shape"/>, or null.</summary>
    private static string? PartProblem(TensorPart part, DType dtype, long[] shape)
    {
        if (part.FullShape.Length != shape.Length || part.Slices.Any(s => s is not { Length: 2 }))
        {
            return $"part of full shape [{string.Join(", ", part.FullShape)}] does not match shape [{string.Join(", ", shape)}]";
        }
        var want = TensorWant.Along(part.Dim, [.. part.Slices.Select(s => new SliceRange(s[0], s[1]))]);
        if (WorkerWants.Problem(want, dtype, part.FullShape) is { } why)
        {
            return "part: " + why;
        }
        return part.PartShape().SequenceEqual(shape) ? null
            : $"part shape [{string.Join(", ", part.PartShape())}] (slices of [{string.Join(", ", part.FullShape)}] along dimension {part.Dim}) is not shape [{string.Join(", ", shape)}]";
    }

    /// <summary>
    /// Why a part said to lie in place (<see cref="WireTensor.Pitch"/>) cannot be read so, or null; else its rows and the bytes from its
    /// first to its last (rows − 1 pitches and a row), which must lie in the segment. The part has been checked already.
    /// </summary>
    private string? StridedProblem(WireTensor t, long pitch, bool onDevice, out long rows, out long extent)
    {
        (rows, extent) = (1, t.NBytes);
        if (!TakesStrided)
        {
            return $"pitch {pitch} sent to a worker that takes packed parts only (its hello did not say \"strided\")";
        }
        if (t.Part is not { Slices.Length: 1 } part)
        {
            return t.Part is null ? $"pitch {pitch} comes without a part" : $"pitch {pitch} comes with a part of {t.Part.Slices.Length} slices (it describes one)";
        }
        if (onDevice)
        {
            return $"pitch {pitch}: parts in place come only in shared memory, not in a CUDA buffer";
        }
        if (t.Sha256 is not null || t.Crc32 is not null)
        {
            return "a part in place carries no checksum (checksums cover whole tensors)";
        }
        if (pitch <= 0)
        {
            return $"pitch {pitch} must be positive";
        }
        rows = t.Shape.Take(part.Dim).Aggregate(1L, (a, b) => a * b); // The shape's element count fits (checked with nbytes), so its rows do.
        var row = rows == 0 ? 0 : t.NBytes / rows;
        if (pitch < row)
        {
            return $"pitch {pitch} is smaller than a row of the part ({row} bytes)";
        }
        if (rows > 1 && (rows - 1 > (long.MaxValue - row) / pitch))
        {
            return $"{rows} rows {pitch} bytes apart overflow a 64-bit offset";
        }
        extent = rows == 0 ? 0 : ((rows - 1) * pitch) + row;
        return null;
    }

    /// <summary>
    /// Checks the tensors that carry a checksum (crc32, sha256), tensors in parallel and big ones in pieces. Tensors in
    /// GPU memory are copied to the host to be hashed (every byte crosses PCIe once more).
    /// </summary>
    private bool TryVerify(LoadMessage load, ReceivedTensor[] views, out string error)
    {
        if (!load.Tensors.Any(t => t.Sha256 is not null || t.Crc32 is not null))
        {
            error = "";
            return true;
        }
        var mismatch = new string?[views.Length];
        var where = $"load of bucket {load.Bucket}";
        var device = _deviceId;
        Parallel.For(0, views.Length, i =>
        {
            var (t, view) = (load.Tensors[i], views[i]);
            if (t.Crc32 is { } crc && TensorChecksum.TryParseHex(crc, out var expected) && TensorChecksum.Crc32(view) is var actual && actual != expected)
            {
                mismatch[i] = $"{where}: tensor '{view.Name}' on device '{device}' has crc32 {TensorChecksum.Hex(actual)}, expected {TensorChecksum.Hex(expected)} (corrupted on the way)";
            }
            else if (t.Sha256 is { } sum && TensorHash.Sha256Hex(view) is var digest && !digest.Equals(sum, StringComparison.OrdinalIgnoreCase))
            {
                mismatch[i] = $"{where}: tensor '{view.Name}' has sha256 {digest}, expected {sum.ToLowerInvariant()}";
            }
        });
        error = mismatch.FirstOrDefault(m => m is not null) ?? "";
        return error.Length == 0;
    }

    /// <summary>Replies with the error and remembers it: the update now ends in failure, once the parameter server aborts or leaves.</summary>
    private async Task FailAsync(string error, Exception? cause, CancellationToken ct)
    {
        _failure = new WeightReceiveException(error, cause);
        Drop();
        await ReplyAsync(new WorkerReply(false, error), ct).ConfigureAwait(false);
    }

    private async Task<byte[]?> ReadFrameAsync(TimeSpan wait, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(wait);
        try
        {
            return await WorkerFraming.ReadFrameAsync(_stream, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw _failure ?? new WeightReceiveException(
                $"no message from the parameter server at {_address} within {wait.TotalSeconds:0.###} s {Where()} (expected {Expected()})");
        }
        catch (InvalidDataException e)
        {
            // The stream is out of step: say why (best effort), then drop the connection.
            var error = _failure ?? new WeightReceiveException($"bad frame from the parameter server at {_address} {Where()}: {e.Message}", e);
            try
            {
                await ReplyAsync(new WorkerReply(false, error.Message), ct).ConfigureAwait(false);
            }
            catch (WeightReceiveException)
            {
                // It is gone as well.
            }
            throw error;
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            throw _failure ?? new WeightReceiveException($"lost the parameter server at {_address} {Where()}: {e.Message}", e);
        }
    }

    private Task ReplyAsync(WorkerReply reply, CancellationToken ct) => WriteAsync(reply, "a reply", ct);

    private Task WriteAsync<T>(T frame, string what, CancellationToken ct) => WriteRawAsync(WorkerFraming.Encode(frame), what, ct);

    private async Task WriteRawAsync(byte[] frame, string what, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(_idle);
        try
        {
            await _stream.WriteAsync(frame, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw _failure ?? new WeightReceiveException($"the parameter server at {_address} did not take {what} within {_idle.TotalSeconds:0.###} s {Where()}");
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            throw _failure ?? new WeightReceiveException($"lost the parameter server at {_address} while sending {what} {Where()}: {e.Message}", e);
        }
    }

    private string Where() => _phase switch
    {
        Phase.Connected => "before attach",
        Phase.Attached when _lastBucket < 0 => "after attach, before any bucket",
        Phase.Attached => $"after bucket {_lastBucket} ({_buckets} loaded)",
        _ => "after release, before finish",
    };

    private string Expected() => _phase switch
    {
        Phase.Connected => "attach",
        Phase.Attached => "load or release",
        _ => "finish",
    };

    private static string Name(WorkerMessage message) => message switch
    {
        AttachMessage => "attach",
        LoadMessage => "load",
        ReleaseMessage => "release",
        FinishMessage => "finish",
        AbortMessage => "abort",
        _ => message.GetType().Name,
    };

    /// <summary>Ends this update's use of the buffer; the mapping itself stays for the next update (see <see cref="SegmentMappings"/>).</summary>
    private void Unmap()
    {
        CloseCuda();
        if (_segment is not null)
        {
            _segment = null;
            _registered = [];
            SegmentMappings.Return(_address);
        }
    }

    /// <summary>A CUDA IPC mapping is closed at every release: the parameter server may free the memory once the update ends.</summary>
    private void CloseCuda()
    {
        _cudaBuffer?.Dispose();
        _cudaBuffer = null;
    }

    /// <summary>After a failure the buffer may be gone for good: unmap it.</summary>
    private void Drop()
    {
        CloseCuda();
        if (_segment is not null)
        {
            _segment = null;
            _registered = [];
            SegmentMappings.Drop(_address);
        }
    }

    /// <summary>Ends the session; a session that did not get to "release" (failure, cancellation, a vanished server) unmaps.</summary>
    public void Dispose()
    {
        if (_phase != Phase.Released)
        {
            Drop();
        }
        _stream.Dispose();
    }
}
