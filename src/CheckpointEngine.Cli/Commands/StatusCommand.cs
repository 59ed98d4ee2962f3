using System.CommandLine;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json;
using CheckpointEngine.Cli.Progress;
using CheckpointEngine.Hosting;
using CheckpointEngine.Runtime;
using Spectre.Console;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine status (--uds PATH | --url URL) [--json]</c>: asks a running <c>serve</c> rank (its <c>GET /v1/status</c>,
/// with the world's token) what it is doing: the running update's progress, and the last update's per-stage times.
/// </summary>
internal static class StatusCommand
{
    public static Command Create(TextWriter stdout)
    {
        var uds = new Option<string?>("--uds") { Description = "the Unix socket serve listens on" };
        var url = new Option<string?>("--url") { Description = "the base URL serve listens on, e.g. http://127.0.0.1:8000" };
        var json = new Option<bool>("--json") { Description = "print the API's status object as it is" };
        var timeout = new Option<double>("--timeout") { Description = "seconds to wait for the answer", DefaultValueFactory = _ => 10 };
        timeout.Validators.Add(r => { if (!(r.GetValueOrDefault<double>() > 0)) r.AddError("--timeout must be a positive number of seconds"); });
        var command = new Command("status", "Show a serve rank's running update (progress) and its last update (per-stage times).") { uds, url, json, timeout };
        command.Validators.Add(r =>
        {
            if ((r.GetValue(uds) is null) == (r.GetValue(url) is null))
            {
                r.AddError("give exactly one of --uds PATH or --url URL (where serve listens)");
            }
            if (r.GetValue(url) is { } u && !(Uri.TryCreate(u, UriKind.Absolute, out var parsed) && parsed.Scheme is "http" or "https"))
            {
                r.AddError($"--url '{u}' is not an http(s) URL");
            }
        });
        command.SetAction(async (result, ct) =>
        {
            var socket = result.GetValue(uds);
            var where = socket is null ? result.GetValue(url)!.TrimEnd('/') : "http://localhost";
            using var http = socket is null ? new HttpClient() : EngineTrigger.UnixSocketClient(socket);
            http.Timeout = TimeSpan.FromSeconds(result.GetValue(timeout));
            using var request = new HttpRequestMessage(HttpMethod.Get, where + "/v1/status");
            if (Environment.GetEnvironmentVariable(RankConfig.TokenVariable) is { Length: > 0 } token)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            }
            var target = socket ?? where;
            string body;
            try
            {
                using var response = await http.SendAsync(request, ct).ConfigureAwait(false);
                body = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    throw new CheckpointEngineException($"{target} answered {(int)response.StatusCode}: {Error(body)}");
                }
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
            {
                throw new CheckpointEngineException($"cannot reach serve at {target}: {e.Message}", e);
            }
            if (result.GetValue(json))
            {
                stdout.WriteLine(body);
                return 0;
            }
            JsonElement status;
            try
            {
                status = JsonDocument.Parse(body).RootElement;
            }
            catch (JsonException e)
            {
                throw new CheckpointEngineException($"{target} did not answer with a status object: {e.Message}", e);
            }
            Print(status, stdout);
            return 0;
        });
        return command;
    }

    private static string Error(string body)
    {
        try
        {
            return JsonDocument.Parse(body).RootElement.GetProperty("error").GetString() ?? body;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            return body.Length > 200 ? body[..200] + "..." : body;
        }
    }

    /// <summary>A few lines, and the last update's stages as a small table.</summary>
    private static void Print(JsonElement s, TextWriter stdout)
    {
        var rank = s.GetProperty("rank").GetInt32();
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"rank {rank} of {s.GetProperty("world_size").GetInt32()}, device {s.GetProperty("device_id").GetString()}, {s.GetProperty("checkpoints").GetInt32()} checkpoint(s) registered"));
        if (s.GetProperty("world_broken").GetString() is { } broken)
        {
            stdout.WriteLine($"world broken: {broken}");
        }
        if (s.GetProperty("update") is { ValueKind: JsonValueKind.Object } u)
        {
            var p = new ProgressLine(u.GetProperty("mode").GetString()!, u.GetProperty("buckets_done").GetInt32(), u.GetProperty("buckets_total").GetInt32(),
                u.GetProperty("bytes_done").GetInt64(), u.GetProperty("bytes_total").GetInt64(), u.GetProperty("elapsed_seconds").GetDouble());
            stdout.WriteLine($"updating '{u.GetProperty("checkpoint").GetString()}': {RankBoard.Describe(p)}");
        }
        else
        {
            stdout.WriteLine(s.GetProperty("busy").GetString() is { } busy ? $"busy: {busy}" : "no update running");
        }
        if (s.TryGetProperty("last_update", out var last) && last.ValueKind == JsonValueKind.Object)
        {
            var seconds = last.GetProperty("seconds").GetDouble();
            var bytes = last.GetProperty("bytes").GetInt64();
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"last update of '{last.GetProperty("checkpoint").GetString()}' ({last.GetProperty("mode").GetString()}): {ByteSize.Format(bytes)} in {seconds:F3} s ({bytes / Math.Max(seconds, 1e-9) / 1e9:F2} GB/s), {last.GetProperty("buckets").GetInt32()} buckets"));
            var stages = last.GetProperty("stages");
            var table = new Table { Border = TableBorder.Ascii };
            table.AddColumns("stage", "seconds (sum over buckets)");
            table.Columns[1].RightAligned();
            foreach (var (name, key) in new[] { ("h2d", "h2d_seconds"), ("broadcast", "broadcast_seconds"), ("reload", "reload_seconds") })
            {
                table.AddRow(name, stages.GetProperty(key).GetDouble().ToString("F3", CultureInfo.InvariantCulture));
            }
            LaunchView.Plain(stdout).Write(table);
        }
        else
        {
            stdout.WriteLine("no update finished yet");
        }
    }
}
