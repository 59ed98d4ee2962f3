using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// Runs <c>ckpt-engine soak</c>: a world of <c>serve</c> rank processes and a reference <c>worker</c> process, launched
/// as <c>launch</c> starts them, driven only through the HTTP API the way an RL loop drives it. Round k registers
/// step k on every rank (each rank its own file of one small checkpoint written once), gathers its metas, updates
/// the worker and unregisters step k−1; after each round it reads every process's resident memory. Whatever a
/// round leaves behind shows as a slope.
/// </summary>
internal static class SoakRunner
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    public static async Task<SoakReport> RunAsync(SoakSettings settings, TextWriter progress, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (!OperatingSystem.IsLinux())
        {
            throw new CheckpointEngineException("soak reads each process's memory from /proc: it runs on Linux only");
        }
        var date = DateTimeOffset.UtcNow;
        var root = Directory.CreateTempSubdirectory("ckpt-engine-soak-").FullName;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var workerLines = new LaunchLines("listening on ", 1);
        var serveLines = new LaunchLines("serving rank ", settings.Ranks);
        var launches = new List<Task<int>>();
        try
        {
            var files = SampleCheckpoint.Write(Path.Combine(root, "checkpoint"), SoakSettings.CheckpointBytes, shards: settings.Ranks, layers: settings.LayerCount);
            var ids = DeviceOption.WorkerIds(DeviceKind.Host, settings.Ranks, "soak");
            var token = Convert.ToHexString(RandomNumberGenerator.GetBytes(16));
            var count = settings.Ranks.ToString(CultureInfo.InvariantCulture);
            launches.Add(Background(new LaunchOptions { NProc = 1, Command = Launcher.SelfCommand("worker", "--listen", "127.0.0.1:0", "--tp", count, "--device-ids", string.Join(',', ids)) },
                workerLines, stop.Token));
            var engine = (await ReadyAsync("worker", workerLines, launches[0]).ConfigureAwait(false))[0];
            launches.Add(Background(new LaunchOptions
            {
                NProc = settings.Ranks,
                Command = Launcher.SelfCommand("serve", "--listen", "127.0.0.1:0", "--device", "host"),
                Token = token,
                RankEnvironment = r => new Dictionary<string, string?> { [RankConfig.DeviceIdVariable] = ids[r] },
            }, serveLines, stop.Token));
            var apis = (await ReadyAsync("serve", serveLines, launches[1]).ConfigureAwait(false))
                .Select(rest => rest[(rest.IndexOf(" on ", StringComparison.Ordinal) + 4)..]).ToList();
            using (var checkpoint = Checkpoint.Open(Path.Combine(root, "checkpoint")))
            {
                progress.WriteLine($"soak: checkpoint of {checkpoint.TensorCount} tensors, {checkpoint.TotalBytes} bytes in {files.Count} files, one per rank");
            }
            progress.WriteLine($"soak: {settings.Ranks} serve ranks ({string.Join(", ", apis)}), reference worker at {engine}; {settings.Rounds} rounds");

            var processes = Processes(settings.Ranks);
            var samples = processes.Select(_ => new List<ResidentMemory>()).ToList();
            var clients = apis.Select(a => new HttpClient { BaseAddress = new Uri(a), Timeout = TimeSpan.FromSeconds(settings.RoundTimeoutSeconds) }).ToList();
            try
            {
                foreach (var c in clients)
                {
                    c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
                }
                var clock = Stopwatch.StartNew();
                for (var round = 1; round <= settings.Rounds; round++)
                {
                    try
                    {
                        await RoundAsync(round, clients, files, engine, settings.RoundTimeoutSeconds, stop.Token).ConfigureAwait(false);
                    }
                    catch (Exception e) when ((e is HttpRequestException or TaskCanceledException) && !ct.IsCancellationRequested)
                    {
                        throw new CheckpointEngineException($"soak: round {round} failed: {e.Message}; the ranks' last lines:\n  {serveLines.Tail}\nthe worker's:\n  {workerLines.Tail}");
                    }
                    for (var p = 0; p < processes.Count; p++)
                    {
                        samples[p].Add((PeakMemory.Resident(processes[p].Pid) ?? throw new CheckpointEngineException($"soak: {processes[p].Name} (pid {processes[p].Pid}) is gone after round {round}")).InKiB);
                    }
                    if (round % 10 == 0 || round == settings.Rounds)
                    {
                        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"soak: round {round}/{settings.Rounds}, {clock.Elapsed.TotalSeconds:F1} s: {string.Join(", ", processes.Select((p, i) => $"{p.Name} {samples[i][^1].Total / 1024.0:F1} MiB"))}"));
                    }
                }
                return new SoakReport(MachineInfo.Current(), date, settings, [.. processes.Select((p, i) => new SoakProcess(p.Name, p.Pid, samples[i]))], clock.Elapsed.TotalSeconds);
            }
            finally
            {
                clients.ForEach(c => c.Dispose());
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            foreach (var launch in launches)
            {
                try
                {
                    await launch.ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    // Stopped by us: SIGTERM, as Ctrl-C stops a launch.
                }
            }
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>One RL step: register step k on every rank, gather its metas (the first step: and prepare), update the engine, unregister step k−1.</summary>
    private static async Task RoundAsync(int round, List<HttpClient> ranks, IReadOnlyList<string> files, string engine, double timeout, CancellationToken ct)
    {
        var name = SoakSettings.StepName(round);
        await Task.WhenAll(ranks.Select((c, r) => CallAsync(c, HttpMethod.Post, $"/v1/checkpoints/{name}/files",
            new JsonObject { ["files"] = new JsonArray([.. files.Where((_, i) => i % ranks.Count == r).Select(f => (JsonNode)f)]) }, ct))).ConfigureAwait(false);
        await Task.WhenAll(ranks.Select(c => CallAsync(c, HttpMethod.Post, $"/v1/checkpoints/{name}/gather-metas", new JsonObject { ["timeout"] = timeout }, ct))).ConfigureAwait(false);
        if (round == 1)
        {
            // As a driver does once: the first update then runs as a warm one.
            await Task.WhenAll(ranks.Select(c => CallAsync(c, HttpMethod.Post, $"/v1/checkpoints/{name}/prepare",
                new JsonObject { ["update_url"] = engine, ["timeout"] = timeout }, ct))).ConfigureAwait(false);
        }
        var updates = await Task.WhenAll(ranks.Select(c => CallAsync(c, HttpMethod.Post, $"/v1/checkpoints/{name}/update",
            new JsonObject { ["update_url"] = engine, ["timeout"] = timeout }, ct))).ConfigureAwait(false);
        // A round that moved nothing would measure nothing.
        if (updates.FirstOrDefault(u => !(u?["took_part"]?.GetValue<bool>() == true && u["bytes"]?.GetValue<long>() > 0)) is { } idle)
        {
            throw new HttpRequestException($"the update of {name} delivered nothing: {idle?.ToJsonString()}");
        }
        if (round > 1)
        {
            await Task.WhenAll(ranks.Select(c => CallAsync(c, HttpMethod.Delete, $"/v1/checkpoints/{SoakSettings.StepName(round - 1)}", null, ct))).ConfigureAwait(false);
        }
    }

    /// <summary>One API call; its JSON answer, or an exception naming the call and the rank's error.</summary>
    private static async Task<JsonNode?> CallAsync(HttpClient client, HttpMethod method, string path, JsonObject? body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path) { Content = body is null ? null : JsonContent.Create(body) };
        using var response = await client.SendAsync(request, ct).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            throw new HttpRequestException($"{method} {client.BaseAddress}{path.TrimStart('/')} answered {(int)response.StatusCode}: {text}");
        }
        return JsonNode.Parse(await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false));
    }

    /// <summary>A launch left running until <paramref name="ct"/> stops it; its lines go to <paramref name="lines"/>.</summary>
    private static Task<int> Background(LaunchOptions options, LaunchLines lines, CancellationToken ct) =>
        Task.Run(() => Launcher.RunAsync(options, lines, lines, ct), CancellationToken.None);

    private static async Task<IReadOnlyList<string>> ReadyAsync(string what, LaunchLines lines, Task launch)
    {
        var first = await Task.WhenAny(lines.ReadyAsync, launch, Task.Delay(StartTimeout)).ConfigureAwait(false);
        if (first != lines.ReadyAsync)
        {
            throw new CheckpointEngineException($"soak: the {what} processes {(first == launch ? "exited" : $"were not ready within {StartTimeout.TotalSeconds:F0} s")}; their last lines:\n  {lines.Tail}");
        }
        return await lines.ReadyAsync.ConfigureAwait(false);
    }

    /// <summary>The serve ranks (by rank) and the worker among this process's children.</summary>
    private static List<(string Name, int Pid)> Processes(int ranks)
    {
        var serve = PeakMemory.ChildrenRunning("serve").Where(c => c.Rank >= 0).OrderBy(c => c.Rank).ToList();
        var worker = PeakMemory.ChildrenRunning("worker");
        if (serve.Count != ranks || worker.Count != 1)
        {
            throw new CheckpointEngineException($"soak: found {serve.Count} serve processes of {ranks} and {worker.Count} worker processes of 1 among this process's children (is /proc readable?)");
        }
        return [.. serve.Select(s => ($"serve rank {s.Rank}", s.Pid)), ("worker", worker[0].Pid)];
    }
}
