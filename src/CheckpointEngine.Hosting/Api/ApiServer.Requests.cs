using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Interop;
using CheckpointEngine.Quantization;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.P2P;
using Microsoft.Win32.SafeHandles;
using Microsoft.AspNetCore.Http;

namespace CheckpointEngine.Hosting.Api;

// Request bodies: read, checked field by field, every problem a 400 that names the field.
public sealed partial class ApiServer
{
    private const string RegisterExample = "{\"files\": [\"/path/model-00001-of-00002.safetensors\", ...], \"quantize\": null}";
    private const string UpdateExample = "{\"ranks\": [], \"update_url\": \"http://engine:8000\", \"inference_group_ranks\": [], \"timeout\": 300, \"uds\": null, \"verify\": false, \"p2p_transport\": null, \"engine\": \"vllm\", \"class_relays\": null, \"buckets_in_flight\": null}";
    private const string GatherExample = "{\"timeout\": 300} (or no body)";
    private const double DefaultTimeoutSeconds = 300;
    private const double MaxTimeoutSeconds = 7 * 24 * 3600;

    /// <param name="EngineUid">The user the engine behind <paramref name="Uds"/> must run as (SO_PEERCRED); null: not checked (allow-listed, or no socket).</param>
    /// <param name="Engine">The HTTP surface of the engine at <paramref name="UpdateUrl"/> (vLLM's unless the body names SGLang's).</param>
    private sealed record UpdateRequest(IReadOnlyList<int> Ranks, string? UpdateUrl, IReadOnlyList<int> InferenceGroupRanks, TimeSpan Timeout, string? Uds, uint? EngineUid, bool Verify,
        EngineApi Engine)
    {
        /// <summary>How a P2P update reads ("p2p_transport"); null: the rank's store as started.</summary>
        public P2PTransport? P2PTransport { get; init; }

        /// <summary>Whether a shard-aware update relays classes between hosts ("class_relays", see <see cref="UpdateOptions.ClassRelays"/>); null: auto.</summary>
        public bool? ClassRelays { get; init; }

        /// <summary>Relayed buckets that may move at once ("buckets_in_flight", see <see cref="UpdateOptions.BucketsInFlight"/>).</summary>
        public int? BucketsInFlight { get; init; }
    }

    /// <summary>The body as JSON; null when it is empty and <paramref name="required"/> is false.</summary>
    private static async Task<JsonElement?> ReadJsonAsync(HttpContext http, bool required, string example)
    {
        using var buffer = new MemoryStream();
        await http.Request.Body.CopyToAsync(buffer, http.RequestAborted).ConfigureAwait(false); // Bounded by MaxRequestBodySize (413 past it).
        if (buffer.Length == 0)
        {
            return required ? throw Bad($"the request body is empty: expected {example}") : null;
        }
        try
        {
            using var doc = JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), new JsonDocumentOptions { MaxDepth = 16 });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw Bad($"the request body must be a JSON object like {example}, not {Kind(doc.RootElement)}");
            }
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            var where = e.LineNumber is { } line ? $" (line {line + 1}, byte {e.BytePositionInLine + 1})" : "";
            throw Bad($"the request body is not valid JSON: {FirstSentence(e.Message)}{where}");
        }
    }

    /// <summary>
    /// <c>"quantize": "fp8"</c> converts while registering, following the config.json beside the first file
    /// (as <c>ckpt-engine quantize</c> does); absent or null registers the bytes as they are.
    /// </summary>
    private Fp8Quantization? ParseQuantize(JsonElement root, List<string> files)
    {
        if (!root.TryGetProperty("quantize", out var q) || q.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (q.ValueKind != JsonValueKind.String || q.GetString() != "fp8")
        {
            throw Bad($"\"quantize\" must be \"fp8\" or null, not {q.GetRawText()}");
        }
        try
        {
            return Fp8Quantization.ForCheckpoint(files[0], allowed: _allowedDirectories);
        }
        catch (CheckpointEngineException e) when (e is not PathNotAllowedException)
        {
            throw Bad(e.Message);
        }
    }

    private static List<string> ParseFiles(JsonElement root)
    {
        OnlyFields(root, RegisterExample, "files", "quantize");
        if (!root.TryGetProperty("files", out var files) || files.ValueKind == JsonValueKind.Null)
        {
            throw Bad($"\"files\" is missing: expected {RegisterExample}");
        }
        if (files.ValueKind != JsonValueKind.Array)
        {
            throw Bad($"\"files\" must be a list of paths, not {Kind(files)}");
        }
        if (files.GetArrayLength() == 0)
        {
            throw Bad("\"files\" is empty: name at least one .safetensors file");
        }
        var paths = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var f in files.EnumerateArray())
        {
            var where = $"files[{paths.Count}]";
            if (f.ValueKind != JsonValueKind.String || f.GetString() is not { Length: > 0 } path)
            {
                throw Bad($"{where} must be a non-empty path, not {Kind(f)}");
            }
            string full;
            try
            {
                full = Path.GetFullPath(path);
            }
            catch (ArgumentException)
            {
                throw Bad($"{where}: '{path}' is not a valid path");
            }
            if (!seen.Add(full))
            {
                throw Bad($"{where}: {path} is listed twice");
            }
            paths.Add(full);
        }
        return paths;
    }

    /// <summary>
    /// Each file must be a regular file (no FIFO that would hang, no device) inside the allowed directories,
    /// if any; its contents are checked by the registration itself, which opens it the same way again.
    /// </summary>
    private void CheckFiles(List<string> files)
    {
        for (var i = 0; i < files.Count; i++)
        {
            SafeFileHandle? handle;
            string? problem;
            try
            {
                handle = RegularFile.TryOpenRead(files[i], _allowedDirectories, out problem);
            }
            catch (PathNotAllowedException e)
            {
                throw new ApiError(StatusCodes.Status403Forbidden, $"files[{i}]: {e.Message}");
            }
            if (handle is null)
            {
                throw Bad($"files[{i}]: '{files[i]}' {problem}{(problem == "is a directory" ? "; list its .safetensors files" : "")}");
            }
            handle.Dispose();
        }
    }

    private static TimeSpan ParseGather(JsonElement? body)
    {
        if (body is not { } root)
        {
            return TimeSpan.FromSeconds(DefaultTimeoutSeconds);
        }
        OnlyFields(root, GatherExample, "timeout");
        return Timeout(root);
    }

    private UpdateRequest ParseUpdate(JsonElement root)
    {
        OnlyFields(root, UpdateExample, "ranks", "update_url", "inference_group_ranks", "timeout", "uds", "verify", "p2p_transport", "engine", "class_relays", "buckets_in_flight");
        P2PTransport? transport = null;
        if (root.TryGetProperty("p2p_transport", out var pt) && pt.ValueKind != JsonValueKind.Null)
        {
            transport = pt.ValueKind == JsonValueKind.String && pt.GetString() is "tcp" or "ucx" or "auto"
                ? P2PTransports.Parse(pt.GetString(), "p2p_transport")
                : throw Bad($"\"p2p_transport\" must be \"tcp\", \"ucx\", \"auto\" or null, not {pt.GetRawText()}");
        }
        var verify = false;
        if (root.TryGetProperty("verify", out var v) && v.ValueKind != JsonValueKind.Null)
        {
            verify = v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Bad($"\"verify\" must be true or false, not {v.GetRawText()}");
        }
        bool? relays = null;
        if (root.TryGetProperty("class_relays", out var cr) && cr.ValueKind != JsonValueKind.Null)
        {
            relays = cr.ValueKind is JsonValueKind.True or JsonValueKind.False ? cr.GetBoolean() : throw Bad($"\"class_relays\" must be true, false or null (auto), not {cr.GetRawText()}");
        }
        int? inFlight = null;
        if (root.TryGetProperty("buckets_in_flight", out var bf) && bf.ValueKind != JsonValueKind.Null)
        {
            inFlight = bf.ValueKind == JsonValueKind.Number && bf.TryGetInt32(out var n) && n is >= 1 and <= 8
                ? n
                : throw Bad($"\"buckets_in_flight\" must be a whole number from 1 to 8, not {bf.GetRawText()}");
        }
        string? url = null;
        if (root.TryGetProperty("update_url", out var u) && u.ValueKind != JsonValueKind.Null)
        {
            if (u.ValueKind != JsonValueKind.String || !Uri.TryCreate(u.GetString(), UriKind.Absolute, out var parsed) || parsed.Scheme is not ("http" or "https"))
            {
                throw Bad($"\"update_url\" must be the inference engine's http(s) URL, e.g. http://engine:8000, not {u.GetRawText()}");
            }
            url = u.GetString();
        }
        string? uds = null;
        if (root.TryGetProperty("uds", out var s) && s.ValueKind != JsonValueKind.Null)
        {
            if (s.ValueKind != JsonValueKind.String || s.GetString() is not { Length: > 0 } path)
            {
                throw Bad($"\"uds\" must be the path of the engine's Unix socket or null, not {s.GetRawText()}");
            }
            uds = Path.GetFullPath(path);
        }
        uint? engineUid = null;
        if (uds is not null && url is not null && !_engines.TrustsSocket(uds))
        {
            // The URL's host is not connected to over a socket: only the socket's owner and its engine's user count.
            engineUid = Posix.GetEffectiveUid();
            if (EngineAllowList.CheckSocket(uds, engineUid.Value) is { } problem)
            {
                throw Bad($"\"uds\": '{uds}' {problem}; to use it anyway, start serve with --allow-engine-socket {uds} (or {RankConfig.AllowEngineSocketsVariable})");
            }
        }
        else if (uds is null && url is not null && !_engines.AllowsHost(new Uri(url)))
        {
            var host = new Uri(url).Host;
            throw Bad($"\"update_url\": {host} is not a loopback address, and the update would send this rank's worker sockets there; " +
                $"to allow it, start serve with --allow-engine-host {host} (or {RankConfig.AllowEngineHostsVariable})");
        }
        return new UpdateRequest(Ranks(root, "ranks"), url, Ranks(root, "inference_group_ranks"), Timeout(root), uds, engineUid, verify, Engine(root)) { P2PTransport = transport, ClassRelays = relays, BucketsInFlight = inFlight };
    }

    /// <summary>A list of distinct ranks of this world; absent or null is empty.</summary>
    private List<int> Ranks(JsonElement root, string field)
    {
        var ranks = new List<int>();
        if (!root.TryGetProperty(field, out var list) || list.ValueKind == JsonValueKind.Null)
        {
            return ranks;
        }
        if (list.ValueKind != JsonValueKind.Array)
        {
            throw Bad($"\"{field}\" must be a list of ranks, not {Kind(list)}");
        }
        var size = ParameterServer.World.Size;
        foreach (var r in list.EnumerateArray())
        {
            if (r.ValueKind != JsonValueKind.Number || !r.TryGetInt32(out var rank))
            {
                throw Bad($"{field}[{ranks.Count}] must be a whole number, not {r.GetRawText()}");
            }
            if (rank < 0 || rank >= size)
            {
                throw Bad($"{field}[{ranks.Count}]: {rank} is not a rank of this world (ranks 0..{size - 1})");
            }
            if (ranks.Contains(rank))
            {
                throw Bad($"{field}[{ranks.Count}]: rank {rank} is listed twice");
            }
            ranks.Add(rank);
        }
        return ranks;
    }

    /// <summary>
    /// <c>"engine": "vllm"</c> (also when absent or null, as the original's API has it) or <c>"sglang"</c>. No "auto": the
    /// API does not wait for the engine before it posts, so there is no moment to tell them apart (the CLI's update does).
    /// </summary>
    private static EngineApi Engine(JsonElement root)
    {
        if (!root.TryGetProperty("engine", out var e) || e.ValueKind == JsonValueKind.Null)
        {
            return EngineApi.Vllm;
        }
        return (e.ValueKind == JsonValueKind.String ? e.GetString() : null) switch
        {
            "vllm" => EngineApi.Vllm,
            "sglang" => EngineApi.Sglang,
            _ => throw Bad($"\"engine\" must be \"vllm\" (/collective_rpc) or \"sglang\" (/update_weights_from_ipc), not {e.GetRawText()}"),
        };
    }

    private static TimeSpan Timeout(JsonElement root)
    {
        if (!root.TryGetProperty("timeout", out var t) || t.ValueKind == JsonValueKind.Null)
        {
            return TimeSpan.FromSeconds(DefaultTimeoutSeconds);
        }
        if (t.ValueKind != JsonValueKind.Number || !t.TryGetDouble(out var seconds) || !(seconds > 0) || seconds > MaxTimeoutSeconds)
        {
            throw Bad($"\"timeout\" must be a positive number of seconds (at most {MaxTimeoutSeconds:0}), not {t.GetRawText()}");
        }
        return TimeSpan.FromSeconds(seconds);
    }

    /// <summary>Unknown fields are refused: a misspelt "rank" must not silently turn a P2P update into a broadcast.</summary>
    private static void OnlyFields(JsonElement root, string example, params string[] known)
    {
        foreach (var p in root.EnumerateObject())
        {
            if (!known.Contains(p.Name, StringComparer.Ordinal))
            {
                throw Bad($"unknown field \"{p.Name}\": expected {example}");
            }
        }
    }

    private static ApiError Bad(string message) => new(StatusCodes.Status400BadRequest, message);

    private static string Kind(JsonElement e) => HttpJson.Kind(e);

    private static string FirstSentence(string message)
    {
        var cut = message.IndexOf(". ", StringComparison.Ordinal);
        return (cut >= 0 ? message[..cut] : message).TrimEnd('.');
    }
}
