using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace CheckpointEngine.Hosting.Api;

// The endpoints. Every failure is a JSON {"error": "..."} naming the problem; the server keeps serving.
public sealed partial class ApiServer
{
    /// <summary>One collective (gather, update) or unregistration at a time on this rank: collectives must run in the same order on every rank.</summary>
    private readonly ConcurrentDictionary<string, byte> _registering = new(StringComparer.Ordinal);

    private int Rank => ParameterServer.Rank;

    private void MapEndpoints()
    {
        _app.Use(GuardAsync);
        _app.MapGet("/v1/healthz", (RequestDelegate)(http => WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteString("status", "ok");
            w.WriteEndObject();
        })));
        _app.MapGet("/v1/status", (RequestDelegate)StatusAsync);
        _app.MapGet("/v1/checkpoints", (RequestDelegate)ListAsync);
        _app.MapPost("/v1/checkpoints/{name}/files", (RequestDelegate)RegisterAsync);
        _app.MapDelete("/v1/checkpoints/{name}", (RequestDelegate)UnregisterAsync);
        _app.MapGet("/v1/checkpoints/{name}", (RequestDelegate)DescribeAsync);
        _app.MapPost("/v1/checkpoints/{name}/gather-metas", (RequestDelegate)GatherMetasAsync);
        _app.MapPost("/v1/checkpoints/{name}/update", (RequestDelegate)(http => UpdateAsync(http, prepare: false)));
        _app.MapPost("/v1/checkpoints/{name}/prepare", (RequestDelegate)(http => UpdateAsync(http, prepare: true)));
        _app.MapPrometheusScrapingEndpoint("/metrics");
    }

    /// <summary>Authentication, JSON errors for everything that fails, and for unknown routes and methods.</summary>
    private async Task GuardAsync(HttpContext http, RequestDelegate next)
    {
        try
        {
            if (_tokenHash is not null && !Authorized(http.Request))
            {
                http.Response.Headers.WWWAuthenticate = "Bearer";
                throw new ApiError(StatusCodes.Status401Unauthorized, "missing or wrong token: send the world's CKPT_ENGINE_TOKEN as 'Authorization: Bearer <token>'");
            }
            await next(http).ConfigureAwait(false);
            if (!http.Response.HasStarted && http.Response.StatusCode is StatusCodes.Status404NotFound or StatusCodes.Status405MethodNotAllowed)
            {
                throw new ApiError(http.Response.StatusCode, http.Response.StatusCode == StatusCodes.Status404NotFound
                    ? $"no such endpoint: {http.Request.Method} {http.Request.Path}"
                    : $"{http.Request.Method} is not allowed on {http.Request.Path}");
            }
        }
        catch (Exception e) when (!http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
        {
            var (status, message) = Classify(e);
            if (status >= StatusCodes.Status500InternalServerError)
            {
                _log.LogError("{Method} {Path}: {Status} {Error}", http.Request.Method, http.Request.Path, status, message);
            }
            await ErrorAsync(http, status, message).ConfigureAwait(false);
        }
    }

    /// <summary>The status and message for a failure: bad input is 4xx with its own message; our own bugs are 500 with a logged stack trace.</summary>
    private (int Status, string Message) Classify(Exception e)
    {
        switch (e)
        {
            case ApiError a:
                return (a.Status, a.Message);
            case BadHttpRequestException b:
                return (b.StatusCode, b.StatusCode == StatusCodes.Status413PayloadTooLarge ? "the request body is too large" : b.Message);
            case CheckpointFormatException:
                return (StatusCodes.Status400BadRequest, e.Message);
            case PathNotAllowedException:
                return (StatusCodes.Status403Forbidden, e.Message); // A file swapped for a link out after the request was checked.
            case RegistrationBudgetException:
                // 413, not 507: a 4xx says the request as sent will not succeed (clients do not retry it); it is no fault of the server's.
                return (StatusCodes.Status413PayloadTooLarge, $"{e.Message} (serve --registration-budget or {Runtime.RankConfig.RegistrationBudgetVariable})");
            case ServerBusyException:
                return (StatusCodes.Status409Conflict, e.Message);
            case CheckpointEngineException:
                return (StatusCodes.Status500InternalServerError, e.Message); // A failed update, a lost peer: the message says which.
            case OperationCanceledException when _stopping.IsCancellationRequested:
                return (StatusCodes.Status503ServiceUnavailable, $"rank {Rank} is stopping");
            default:
                _log.LogError(e, "internal error");
                return (StatusCodes.Status500InternalServerError, $"internal error on rank {Rank}: {e.GetType().Name}: {e.Message}");
        }
    }

    private bool Authorized(HttpRequest request)
    {
        const string scheme = "Bearer ";
        var header = request.Headers.Authorization.ToString();
        var token = header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase) ? header[scheme.Length..].Trim() : "";
        // Hashes have one length, so the comparison takes the same time whatever was sent.
        return CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(token)), _tokenHash);
    }

    private static string CheckpointName(HttpContext http)
    {
        var name = http.Request.RouteValues["name"] as string ?? "";
        if (name.Length is 0 or > 256 || name.Any(char.IsControl))
        {
            throw Bad($"checkpoint name '{name}' must be 1 to 256 printable characters");
        }
        return name;
    }

    private ApiError UnknownCheckpoint(string name)
    {
        var known = ParameterServer.Registry.Checkpoints.Select(c => c.Name).ToList();
        return new ApiError(StatusCodes.Status404NotFound,
            $"checkpoint '{name}' is not registered on rank {Rank} ({(known.Count == 0 ? "none is" : "registered: " + string.Join(", ", known.Take(10)))})");
    }


    private async Task RegisterAsync(HttpContext http)
    {
        var name = CheckpointName(http);
        var body = (await ReadJsonAsync(http, required: true, RegisterExample).ConfigureAwait(false))!.Value;
        var files = ParseFiles(body);
        if (ParameterServer.Registry.TryGet(name, out _) || !_registering.TryAdd(name, 0))
        {
            throw new ApiError(StatusCodes.Status409Conflict, $"checkpoint '{name}' is already registered on rank {Rank}; unregister it first");
        }
        RegisteredCheckpoint checkpoint;
        var clock = Stopwatch.StartNew();
        try
        {
            CheckFiles(files);
            var options = new RegisterOptions { Quantize = ParseQuantize(body, files), AllowedDirectories = _allowedDirectories };
            // Reading and copying gigabytes: off the request thread.
            checkpoint = await Task.Run(() => ParameterServer.RegisterCheckpoint(name, files.Select(f => new FileSelection(f)), options: options), _stopping.Token).ConfigureAwait(false);
        }
        catch (ArgumentException e)
        {
            throw Bad(e.Message);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw Bad($"cannot read the files of '{name}': {e.Message}");
        }
        catch (InvalidOperationException e) when (ParameterServer.Registry.TryGet(name, out _))
        {
            throw new ApiError(StatusCodes.Status409Conflict, e.Message); // Registered meanwhile by an in-process caller.
        }
        finally
        {
            _registering.TryRemove(name, out _);
        }
        _log.LogInformation("registered '{Checkpoint}': {Files} file(s), {Tensors} tensors, {Bytes} bytes in {Buffers} buffer(s), {Seconds:0.000} s",
            name, files.Count, checkpoint.TensorCount, checkpoint.TensorBytes, checkpoint.Buffers.Count, clock.Elapsed.TotalSeconds);
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            WriteCheckpoint(w, checkpoint);
            w.WriteNumber("files", files.Count);
            w.WriteNumber("seconds", Math.Round(clock.Elapsed.TotalSeconds, 6));
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    /// <summary>Opens an object with a checkpoint's summary; the caller may add fields and closes it.</summary>
    private void WriteCheckpoint(Utf8JsonWriter w, RegisteredCheckpoint c)
    {
        w.WriteStartObject();
        w.WriteString("name", c.Name);
        w.WriteNumber("rank", Rank);
        w.WriteNumber("tensors", c.TensorCount);
        w.WriteNumber("bytes", c.TensorBytes);
        w.WriteNumber("buffers", c.Buffers.Count);
        w.WriteNumber("buffer_bytes", c.BufferBytes);
    }

    private async Task UnregisterAsync(HttpContext http)
    {
        var name = CheckpointName(http);
        if (_registering.ContainsKey(name))
        {
            throw new ApiError(StatusCodes.Status409Conflict, $"checkpoint '{name}' is being registered on rank {Rank}; unregister it when that has finished");
        }
        if (!ParameterServer.Registry.TryGet(name, out _) && ParameterServer.GetMetas(name) is null)
        {
            throw UnknownCheckpoint(name);
        }
        // Refused (409) under a running update or gather: it reads the memory this frees. A rank that holds none of
        // it but gathered its metas forgets them.
        await ParameterServer.UnregisterCheckpointAsync(name, _stopping.Token).ConfigureAwait(false);
        _log.LogInformation("unregistered '{Checkpoint}'", name);
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteString("name", name);
            w.WriteNumber("rank", Rank);
            w.WriteBoolean("unregistered", true);
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// The per-tensor CRC-32s this rank sends its worker with a verified update: every tensor of the gathered metas
    /// (all ranks'), or this rank's registration before a gather.
    /// </summary>
    private async Task DescribeAsync(HttpContext http)
    {
        var name = CheckpointName(http);
        var metas = ParameterServer.GetMetas(name);
        var tensors = metas?.AllTensors.ToList()
            ?? (ParameterServer.Registry.TryGet(name, out var local) ? local.Buffers.SelectMany(b => b.Metas).ToList() : throw UnknownCheckpoint(name));
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteString("name", name);
            w.WriteNumber("rank", Rank);
            w.WriteString("source", metas is null ? "registration" : "metas");
            w.WriteNumber("tensors", tensors.Count);
            w.WriteNumber("bytes", tensors.Sum(t => t.ByteLength));
            w.WriteStartObject("crc32");
            foreach (var t in tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
            {
                if (t.Crc32 is { } crc)
                {
                    w.WriteString(t.Name, Worker.TensorChecksum.Hex(crc));
                }
                else
                {
                    w.WriteNull(t.Name);
                }
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private async Task ListAsync(HttpContext http)
    {
        var checkpoints = ParameterServer.Registry.Checkpoints;
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteStartArray("checkpoints");
            foreach (var c in checkpoints)
            {
                WriteCheckpoint(w, c);
                w.WriteBoolean("metas_gathered", ParameterServer.GetMetas(c.Name) is not null);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private async Task GatherMetasAsync(HttpContext http)
    {
        var name = CheckpointName(http);
        var timeout = ParseGather(await ReadJsonAsync(http, required: false, GatherExample).ConfigureAwait(false));
        Planning.GlobalMetas metas;
        try
        {
            metas = await ParameterServer.GatherMetasAsync(name, timeout, _stopping.Token).ConfigureAwait(false);
        }
        catch (CheckpointFormatException e)
        {
            throw new ApiError(StatusCodes.Status409Conflict, e.Message); // Two ranks registered the same tensor.
        }
        var tensors = metas.AllTensors.Count();
        if (tensors == 0)
        {
            throw new ApiError(StatusCodes.Status404NotFound, $"no rank of the world holds checkpoint '{name}': register its files first");
        }
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteString("name", name);
            w.WriteNumber("rank", Rank);
            w.WriteNumber("ranks", metas.Ranks.Count);
            w.WriteNumber("tensors", tensors);
            w.WriteNumber("bytes", metas.AllTensors.Sum(m => m.ByteLength));
            w.WriteNumber("buffers", metas.Ranks.Sum(r => r.Buffers.Count));
            w.WriteNumber("largest_tensor", metas.LargestTensor);
            w.WriteNumber("local_tensors", metas.Ranks[Rank].Buffers.Sum(b => b.Metas.Count));
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    /// <param name="prepare">The prepare endpoint: the same body, <see cref="ParameterServer.PrepareAsync"/> instead of the update (nothing moves).</param>
    private async Task UpdateAsync(HttpContext http, bool prepare)
    {
        var name = CheckpointName(http);
        var request = ParseUpdate((await ReadJsonAsync(http, required: true, UpdateExample).ConfigureAwait(false))!.Value);
        var mode = request.Ranks.Count == 0 ? UpdateMode.Broadcast : UpdateMode.P2P(request.Ranks);
        var takesPart = mode.Includes(Rank);
        if (takesPart && !ParameterServer.Registry.TryGet(name, out _) && ParameterServer.GetMetas(name)?.AllTensors.Any() != true)
        {
            throw new ApiError(StatusCodes.Status404NotFound,
                $"checkpoint '{name}' is neither registered on rank {Rank} nor are its metas known here: register its files and gather its metas first");
        }
        var trigger = request.UpdateUrl is null ? null : EngineTrigger.Http(request.UpdateUrl, request.InferenceGroupRanks, request.Uds, request.EngineUid, request.Engine);
        // Failures are recorded by the parameter server's telemetry and logged with their message as the request's 500.
        var options = new UpdateOptions { Timeout = request.Timeout, Verify = request.Verify, P2PTransport = request.P2PTransport, ClassRelays = request.ClassRelays, BucketsInFlight = request.BucketsInFlight };
        var report = prepare
            ? await ParameterServer.PrepareAsync(name, mode, trigger, options, _stopping.Token).ConfigureAwait(false)
            : await ParameterServer.UpdateAsync(name, mode, trigger, options, _stopping.Token).ConfigureAwait(false);
        if (takesPart && prepare)
        {
            _log.LogInformation("prepared the update of '{Checkpoint}': {Seconds:0.000} s", name, report.Duration.TotalSeconds);
        }
        else if (takesPart)
        {
            _log.LogInformation("updated '{Checkpoint}': {Bytes} bytes in {Buckets} bucket(s), {Seconds:0.000} s", name, report.BytesDelivered, report.Buckets.Count, report.Duration.TotalSeconds);
        }
        await WriteJsonAsync(http, StatusCodes.Status200OK, w => WriteReport(w, report, mode.Name, takesPart)).ConfigureAwait(false);
    }

    private static void WriteReport(Utf8JsonWriter w, UpdateReport report, string mode, bool tookPart)
    {
        static double S(TimeSpan t) => Math.Round(t.TotalSeconds, 6);
        w.WriteStartObject();
        w.WriteString("checkpoint", report.Checkpoint);
        w.WriteNumber("rank", report.Rank);
        w.WriteString("mode", mode);
        if (report.P2PTransport is { } transport)
        {
            w.WriteString("p2p_transport", transport);
        }
        w.WriteBoolean("took_part", tookPart);
        w.WriteNumber("bytes", report.BytesDelivered);
        w.WriteNumber("seconds", S(report.Duration));
        w.WriteNumber("buckets", report.Buckets.Count);
        w.WriteNumber("bucket_size", report.BucketSize);
        w.WriteNumber("slots", report.Slots);
        w.WriteNumber("buckets_in_flight", report.BucketsInFlight);
        w.WriteStartObject("stages");
        w.WriteNumber("h2d_seconds", S(report.HostToDevice));
        w.WriteNumber("broadcast_seconds", S(report.Broadcast));
        w.WriteNumber("reload_seconds", S(report.Reload));
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private async Task StatusAsync(HttpContext http)
    {
        var ps = ParameterServer;
        var progress = ps.Progress;
        var busy = ps.RunningOperation;
        await WriteJsonAsync(http, StatusCodes.Status200OK, w =>
        {
            w.WriteStartObject();
            w.WriteNumber("rank", ps.Rank);
            w.WriteNumber("world_size", ps.World.Size);
            w.WriteString("device_id", ps.Device.Id);
            w.WriteString("worker_address", ps.WorkerAddress);
            w.WriteString("p2p_address", ps.P2PAddress);
            w.WriteString("p2p_transport", ps.P2PTransport);
            w.WriteString("net_device", ps.NetDevice);
            w.WriteString("world_broken", ps.World.BrokenReason);
            w.WriteNumber("checkpoints", ps.Registry.Checkpoints.Count);
            w.WriteString("busy", busy);
            if (progress is null)
            {
                w.WriteNull("update");
            }
            else
            {
                w.WriteStartObject("update");
                w.WriteString("checkpoint", progress.Checkpoint);
                w.WriteString("mode", progress.Mode);
                w.WriteString("started", progress.Started);
                w.WriteNumber("buckets_done", progress.BucketsDone);
                w.WriteNumber("buckets_total", progress.BucketsTotal);
                w.WriteNumber("bytes_done", progress.BytesDone);
                w.WriteNumber("bytes_total", progress.BytesTotal);
                w.WriteNumber("elapsed_seconds", Math.Round((DateTimeOffset.UtcNow - progress.Started).TotalSeconds, 3));
                w.WriteEndObject();
            }
            if (ps.Telemetry.Last is { } last)
            {
                w.WritePropertyName("last_update");
                WriteReport(w, last.Report, last.Method, tookPart: true);
            }
            else
            {
                w.WriteNull("last_update");
            }
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private static Task ErrorAsync(HttpContext http, int status, string error) => HttpJson.ErrorAsync(http, status, error);

    private static Task WriteJsonAsync(HttpContext http, int status, Action<Utf8JsonWriter> write) => HttpJson.WriteAsync(http, status, write);
}
