using System.Buffers;
using System.Text.Encodings.Web;
using System.Text.Json;
using CheckpointEngine.Hosting;
using CheckpointEngine.Worker;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace CheckpointEngine.ReferenceEngine;

// The HTTP side of the reference worker: vLLM's /collective_rpc and /health, plus a digest of the weights.
public sealed partial class ReferenceWorker
{
    /// <summary>The <c>/collective_rpc</c> method that starts an update (the name vLLM worker extensions use).</summary>
    public const string UpdateMethod = "update_weights_from_ipc";

    /// <summary>How long a digest request waits for a running update to end.</summary>
    private static readonly TimeSpan DigestWait = TimeSpan.FromSeconds(30);

    private void MapEndpoints()
    {
        _app.MapPost("/collective_rpc", (RequestDelegate)CollectiveRpcAsync);
        _app.MapGet("/health", (RequestDelegate)(http => Task.CompletedTask));
        _app.MapGet("/v1/weights/digest", (RequestDelegate)DigestAsync);
    }

    private sealed record UpdateRequest(Dictionary<string, string> Sockets, TimeSpan? Timeout);

    private sealed record ShardOutcome(WorkerShard Shard, ReceiveSummary? Summary, string? Error);

    private async Task CollectiveRpcAsync(HttpContext http)
    {
        UpdateRequest request;
        try
        {
            using var body = await JsonDocument.ParseAsync(http.Request.Body, default, http.RequestAborted).ConfigureAwait(false);
            if (!TryParse(body.RootElement, out request!, out var error))
            {
                await ErrorAsync(http, StatusCodes.Status400BadRequest, error).ConfigureAwait(false);
                return;
            }
        }
        catch (JsonException e)
        {
            var where = e.LineNumber is { } line ? $" (line {line + 1}, byte {e.BytePositionInLine + 1})" : "";
            await ErrorAsync(http, StatusCodes.Status400BadRequest, $"request body is not valid JSON: {FirstSentence(e.Message)}{where}").ConfigureAwait(false);
            return;
        }
        catch (BadHttpRequestException e)
        {
            await ErrorAsync(http, e.StatusCode, e.Message).ConfigureAwait(false);
            return;
        }
        var taking = _shards.Where(s => request.Sockets.ContainsKey(s.DeviceId)).ToList();
        if (taking.Count == 0)
        {
            await ErrorAsync(http, StatusCodes.Status400BadRequest,
                $"none of this worker's devices ({string.Join(", ", DeviceIds)}) is in the map (which has {Sample(request.Sockets.Keys)})").ConfigureAwait(false);
            return;
        }
        if (!_gate.Wait(0))
        {
            await ErrorAsync(http, StatusCodes.Status409Conflict, "an update is already running on this worker").ConfigureAwait(false);
            return;
        }
        ShardOutcome[] outcomes;
        var started = TimeProvider.System.GetTimestamp();
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
            if (request.Timeout is { } timeout)
            {
                deadline.CancelAfter(timeout);
            }
            if (Interlocked.Increment(ref _updates) == _options.FailAtUpdate && _options.FailAtBucket is not null)
            {
                Interlocked.Exchange(ref _failArmed, 1);
            }
            outcomes = await Task.WhenAll(taking.Select(s => UpdateShardAsync(s, request.Sockets[s.DeviceId], request.Timeout, deadline.Token))).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
        var failed = outcomes.Where(o => o.Error is not null).ToList();
        if (failed.Count > 0)
        {
            var error = string.Join("; ", failed.Select(o => $"shard {o.Shard.Rank} ({o.Shard.DeviceId}): {o.Error}"));
            Log($"update failed: {error}");
            var status = _stopping.IsCancellationRequested ? StatusCodes.Status503ServiceUnavailable : StatusCodes.Status500InternalServerError;
            await ErrorAsync(http, status, error).ConfigureAwait(false);
            return;
        }
        var elapsed = TimeProvider.System.GetElapsedTime(started);
        Log($"update: {outcomes.Length} shard(s), {outcomes.Max(o => o.Summary!.Buckets)} bucket(s), {outcomes.Sum(o => o.Summary!.Tensors)} tensors, " +
            $"{outcomes.Sum(o => o.Summary!.Bytes)} bytes in {elapsed.TotalSeconds:0.000} s");
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteStartArray("results");
            foreach (var shard in _shards)
            {
                if (outcomes.FirstOrDefault(o => o.Shard == shard)?.Summary is not { } s)
                {
                    w.WriteNullValue();
                    continue;
                }
                w.WriteStartObject();
                w.WriteString("device_id", shard.DeviceId);
                w.WriteNumber("buckets", s.Buckets);
                w.WriteNumber("tensors", s.Tensors);
                w.WriteNumber("bytes", s.Bytes);
                w.WriteNumber("seconds", Math.Round(s.Elapsed.TotalSeconds, 6));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private async Task<ShardOutcome> UpdateShardAsync(WorkerShard shard, string socket, TimeSpan? timeout, CancellationToken ct)
    {
        try
        {
            var summary = await WeightReceiver.ReceiveAsync(socket, _options.DeclareWants ? shard.Wants() : null, (bucket, tensors) => LoadBucket(shard, bucket, tensors), null, _options.IdleTimeout,
                _options.CorruptTensor is null ? null : (_, views) => Corrupt(views), _options.StridedParts, ct)
                .ConfigureAwait(false);
            return new(shard, summary, null);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            shard.ForgetLayout();
            return new(shard, null, _stopping.IsCancellationRequested
                ? "the worker is stopping"
                : $"the update did not end within the request's timeout of {timeout!.Value.TotalSeconds:0.###} s");
        }
        catch (Exception e)
        {
            // WeightReceiveException carries the protocol's error text; anything else (a bad socket
            // address, no memory for the weights) is reported the same way so the caller sees it.
            // The next update declares nothing until it has seen the layout again (it may be another checkpoint).
            shard.ForgetLayout();
            return new(shard, null, e is WeightReceiveException ? e.Message : $"{e.GetType().Name}: {e.Message}");
        }
    }

    private void LoadBucket(WorkerShard shard, int bucket, IReadOnlyList<ReceivedTensor> tensors)
    {
        if (bucket == _options.FailAtBucket && Interlocked.Exchange(ref _failArmed, 0) == 1)
        {
            throw new InvalidOperationException($"injected failure at bucket {bucket} on {shard.DeviceId}");
        }
        shard.Load(tensors);
        if (_options.ReloadDelay > TimeSpan.Zero)
        {
            Thread.Sleep(_options.ReloadDelay); // The handler is synchronous: the views are valid only during the call.
        }
    }

    private static void WriteMap(System.Text.Json.Utf8JsonWriter w, string property, SortedDictionary<string, string> map)
    {
        w.WriteStartObject(property);
        foreach (var (name, value) in map)
        {
            w.WriteString(name, value);
        }
        w.WriteEndObject();
    }

    /// <summary>Flips a bit of the last byte of the tensor named by <see cref="ReferenceWorkerOptions.CorruptTensor"/>, where it lies in the update's buffer.</summary>
    private unsafe void Corrupt(IReadOnlyList<ReceivedTensor> views)
    {
        foreach (var view in views.Where(v => v.Name == _options.CorruptTensor && v.Length > 0))
        {
            var last = view.Pointer + view.Length - 1;
            if (!view.OnDevice)
            {
                *last ^= 0x01;
                continue;
            }
            var cuda = CheckpointEngine.Interop.Cuda.CudaDriver.Instance;
            cuda.SetCurrent(view.DeviceContext);
            byte b;
            cuda.CopyDeviceToHost((nint)(&b), (ulong)last, 1);
            b ^= 0x01;
            cuda.CopyHostToDevice((ulong)last, (nint)(&b), 1);
        }
    }

    private async Task DigestAsync(HttpContext http)
    {
        if (!await _gate.WaitAsync(DigestWait, http.RequestAborted).ConfigureAwait(false))
        {
            await ErrorAsync(http, StatusCodes.Status503ServiceUnavailable,
                $"an update has been running for over {DigestWait.TotalSeconds:0} s; ask again when it has finished").ConfigureAwait(false);
            return;
        }
        List<(string DeviceId, long Buckets, SortedDictionary<string, string> Tensors, (SortedDictionary<string, string> Crc32, List<string> Sliced) Checksums)> digests;
        SortedDictionary<string, string> assembled = new(StringComparer.Ordinal);
        try
        {
            digests = [.. _shards.Select(s => (s.DeviceId, s.BucketsLoaded, s.Digest(), s.Checksums()))];
            foreach (var name in digests.SelectMany(d => d.Checksums.Sliced).Distinct())
            {
                if (WorkerShard.AssembledCrc32(_shards, name) is { } crc)
                {
                    assembled[name] = TensorChecksum.Hex(crc);
                }
            }
        }
        finally
        {
            _gate.Release();
        }
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteStartArray("shards");
            foreach (var (deviceId, buckets, tensors, (crc32, sliced)) in digests)
            {
                w.WriteStartObject();
                w.WriteString("device_id", deviceId);
                w.WriteNumber("buckets_loaded", buckets);
                WriteMap(w, "tensors", tensors);
                WriteMap(w, "crc32", crc32);
                w.WriteStartArray("sliced");
                sliced.ForEach(w.WriteStringValue);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            WriteMap(w, "assembled_crc32", assembled);
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    /// <summary>Checks a <c>/collective_rpc</c> body: <c>{"method": "update_weights_from_ipc", "args": [{device: ticket}], "kwargs": {}, "timeout": s}</c>.</summary>
    private static bool TryParse(JsonElement root, out UpdateRequest? request, out string error)
    {
        request = null;
        if (root.ValueKind != JsonValueKind.Object)
        {
            error = $"request body must be a JSON object like {{\"method\": \"{UpdateMethod}\", \"args\": [{{device_id: ticket}}]}}, not {Kind(root)}";
            return false;
        }
        if (!root.TryGetProperty("method", out var method) || method.ValueKind != JsonValueKind.String)
        {
            error = "\"method\" must be a string";
            return false;
        }
        if (method.GetString() != UpdateMethod)
        {
            error = $"unknown method '{method.GetString()}': this worker supports only {UpdateMethod}";
            return false;
        }
        if (!root.TryGetProperty("args", out var args) || args.ValueKind != JsonValueKind.Array || args.GetArrayLength() == 0
            || args[0].ValueKind != JsonValueKind.Object)
        {
            error = "\"args\" must be a list whose first item maps device ids to worker tickets";
            return false;
        }
        var sockets = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in args[0].EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String || entry.Value.GetString() is not { Length: > 0 } socket)
            {
                error = $"args[0]: the ticket of device '{entry.Name}' must be a non-empty string, not {Kind(entry.Value)}";
                return false;
            }
            try
            {
                _ = WorkerTicket.Parse(socket);
            }
            catch (ArgumentException e)
            {
                error = $"args[0]: device '{entry.Name}': {e.Message.Split(" (Parameter", 2)[0]}";
                return false;
            }
            if (!sockets.TryAdd(entry.Name, socket))
            {
                error = $"args[0]: device '{entry.Name}' appears twice";
                return false;
            }
        }
        if (root.TryGetProperty("kwargs", out var kwargs) && kwargs.ValueKind is not (JsonValueKind.Object or JsonValueKind.Null))
        {
            error = $"\"kwargs\" must be an object, not {Kind(kwargs)}";
            return false;
        }
        TimeSpan? timeout = null;
        if (root.TryGetProperty("timeout", out var t) && t.ValueKind != JsonValueKind.Null)
        {
            if (t.ValueKind != JsonValueKind.Number || !t.TryGetDouble(out var seconds) || !(seconds > 0) || seconds > int.MaxValue / 1000.0)
            {
                error = $"\"timeout\" must be a positive number of seconds, not {t.GetRawText()}";
                return false;
            }
            timeout = TimeSpan.FromSeconds(seconds);
        }
        request = new UpdateRequest(sockets, timeout);
        error = "";
        return true;
    }

    private static string Kind(JsonElement e) => HttpJson.Kind(e);

    private static string Sample(IEnumerable<string> keys)
    {
        var list = keys.Take(9).ToList();
        return list.Count == 0 ? "no devices" : string.Join(", ", list.Take(8)) + (list.Count > 8 ? ", ..." : "");
    }

    private static string FirstSentence(string message)
    {
        var cut = message.IndexOf(". ", StringComparison.Ordinal);
        return (cut >= 0 ? message[..cut] : message).TrimEnd('.');
    }

    private static Task ErrorAsync(HttpContext http, int status, string error) => HttpJson.ErrorAsync(http, status, error);

    private static Task WriteJsonAsync(HttpContext http, int status, Action<Utf8JsonWriter> write) => HttpJson.WriteAsync(http, status, write);
}
