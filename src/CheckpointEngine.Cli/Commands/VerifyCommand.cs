using System.CommandLine;
using System.Net.Http.Headers;
using System.Text.Json;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine verify --api URL --engine URL NAME</c>: compares the per-tensor CRC-32s a parameter server sends
/// (<c>GET /v1/checkpoints/NAME</c>) with what the engine holds (the reference engine's <c>GET /v1/weights/digest</c>);
/// prints each mismatch and exits 1 if there is any.
/// </summary>
internal static class VerifyCommand
{
    public static Command Create(TextWriter stdout)
    {
        var api = new Option<string>("--api") { Description = "a parameter server's HTTP API (serve --listen), e.g. http://127.0.0.1:7000", Required = true };
        var engine = new Option<string>("--engine") { Description = "the engine's URL (its GET /v1/weights/digest)", Required = true };
        var name = new Argument<string>("NAME") { Description = "the checkpoint" };
        foreach (var o in new[] { api, engine })
        {
            o.Validators.Add(r =>
            {
                if (!Uri.TryCreate(r.GetValueOrDefault<string>(), UriKind.Absolute, out var url) || url.Scheme is not ("http" or "https"))
                {
                    r.AddError($"{r.Option.Name} must be an http(s) URL");
                }
            });
        }
        var command = new Command("verify", "Compare the checksums a parameter server sent with what the engine holds; exit 1 on a mismatch.") { api, engine, name };
        command.SetAction(async (result, ct) =>
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(120) };
            if (Environment.GetEnvironmentVariable(RankConfig.TokenVariable) is { Length: > 0 } token)
            {
                http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token); // The API's token; the engine ignores it.
            }
            var checkpoint = result.GetValue(name)!;
            using var sent = await GetAsync(http, new Uri(new Uri(result.GetValue(api)!), $"/v1/checkpoints/{Uri.EscapeDataString(checkpoint)}"), ct).ConfigureAwait(false);
            using var held = await GetAsync(http, new Uri(new Uri(result.GetValue(engine)!), "/v1/weights/digest"), ct).ConfigureAwait(false);
            var report = Compare(Strings(sent.RootElement, "crc32"), held.RootElement);
            report.Lines.ForEach(stdout.WriteLine);
            stdout.WriteLine(report.Mismatches == 0
                ? $"ok: {report.Compared} tensor checksums of '{checkpoint}' match"
                : $"{report.Mismatches} mismatch(es) in '{checkpoint}' ({report.Compared} compared)");
            return report.Mismatches == 0 ? 0 : 1;
        });
        return command;
    }

    /// <summary>
    /// Every shard's tensors held whole against what was sent; tensors held in tensor-parallel slices once, through the
    /// CRC the engine reassembles across its shards. A tensor sent but missing on a shard is a mismatch too.
    /// </summary>
    internal static (List<string> Lines, int Compared, int Mismatches) Compare(Dictionary<string, string?> sent, JsonElement digest)
    {
        var lines = new List<string>();
        var (compared, mismatches) = (0, 0);
        void Check(string tensor, string where, string? holds)
        {
            compared++;
            var expected = sent[tensor];
            if (holds is null)
            {
                mismatches++;
                lines.Add($"missing: tensor '{tensor}' {where}: not held");
            }
            else if (expected is not null && !holds.Equals(expected, StringComparison.OrdinalIgnoreCase))
            {
                mismatches++;
                lines.Add($"mismatch: tensor '{tensor}' {where}: holds crc32 {holds}, the parameter server sent {expected}");
            }
        }
        if (!digest.TryGetProperty("shards", out var shards) || shards.ValueKind != JsonValueKind.Array)
        {
            throw new CheckpointEngineException("the engine's digest has no 'shards' list (is it the reference engine's GET /v1/weights/digest?)");
        }
        var assembled = Strings(digest, "assembled_crc32");
        var slicedAnywhere = new HashSet<string>(StringComparer.Ordinal);
        foreach (var shard in shards.EnumerateArray())
        {
            var device = shard.TryGetProperty("device_id", out var d) ? d.GetString() : "?";
            var crc = Strings(shard, "crc32");
            var sliced = shard.TryGetProperty("sliced", out var s) && s.ValueKind == JsonValueKind.Array ? s.EnumerateArray().Select(e => e.GetString()!).ToHashSet(StringComparer.Ordinal) : [];
            slicedAnywhere.UnionWith(sliced.Where(sent.ContainsKey));
            foreach (var tensor in sent.Keys.Where(t => !sliced.Contains(t)).Order(StringComparer.Ordinal))
            {
                Check(tensor, $"on device '{device}'", crc.GetValueOrDefault(tensor));
            }
        }
        foreach (var tensor in slicedAnywhere.Order(StringComparer.Ordinal))
        {
            Check(tensor, "(reassembled from the shards' slices)", assembled.GetValueOrDefault(tensor));
        }
        return (lines, compared, mismatches);
    }

    private static Dictionary<string, string?> Strings(JsonElement parent, string property) =>
        parent.TryGetProperty(property, out var map) && map.ValueKind == JsonValueKind.Object
            ? map.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString() : null, StringComparer.Ordinal)
            : throw new CheckpointEngineException($"the answer has no '{property}' object");

    private static async Task<JsonDocument> GetAsync(HttpClient http, Uri url, CancellationToken ct)
    {
        HttpResponseMessage response;
        try
        {
            response = await http.GetAsync(url, ct).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new CheckpointEngineException($"GET {url}: {e.Message}", e);
        }
        using (response)
        {
            var body = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw new CheckpointEngineException($"GET {url}: {(int)response.StatusCode} {body}");
            }
            try
            {
                return JsonDocument.Parse(body);
            }
            catch (JsonException e)
            {
                throw new CheckpointEngineException($"GET {url}: the answer is not JSON ({e.Message})", e);
            }
        }
    }
}
