using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Tests.Support;

namespace CheckpointEngine.IntegrationTests.Api;

/// <summary>Two <c>serve</c> rank processes and a reference worker process, driven only through the HTTP API, as a client of the original would.</summary>
[Collection(nameof(MultiProcessTests))]
public sealed class ServeEndToEndTests : IDisposable
{
    private const string Token = "e2e-api-token";
    private readonly TempDirectory _temp = new();
    private readonly string _id = Guid.NewGuid().ToString("N")[..8];
    private readonly List<Process> _processes = [];

    public void Dispose()
    {
        TestProcess.KillAndDispose(_processes);
        _temp.Dispose();
    }

    private async Task<(Process Process, string Line)> StartAsync(string[] args, string ready, Dictionary<string, string> env)
    {
        var psi = RankCluster.Start(["cli", .. args]);
        foreach (var name in new[] { "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CKPT_ENGINE_HOST_ID" })
        {
            psi.Environment.Remove(name);
        }
        foreach (var (k, v) in env)
        {
            psi.Environment[k] = v;
        }
        var p = Process.Start(psi)!;
        _processes.Add(p);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        deadline.CancelAfter(TimeSpan.FromSeconds(30));
        while (true)
        {
            var line = await p.StandardOutput.ReadLineAsync(deadline.Token)
                ?? throw new InvalidOperationException($"{args[0]} exited: " + await p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken));
            if (line.StartsWith(ready, StringComparison.Ordinal))
            {
                return (p, line);
            }
        }
    }

    private static async Task<JsonElement> OkAsync(HttpClient http, string path, string? body = null)
    {
        using var content = body is null ? null : new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(path, content, TestContext.Current.CancellationToken);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task TwoServeRanks_BroadcastThenP2PUpdate_ThroughTheApi_WorkerHoldsEveryTensor(string transport)
    {
        // The checkpoint in four files; each rank registers two.
        var tensors = Enumerable.Range(0, 24).Select(i => TestTensor.Random($"layers.{i / 3}.w{i % 3}", i % 2 == 0 ? DType.BF16 : DType.F32, [16 + i, 8])).ToArray();
        var files = tensors.Chunk(6).Select((part, i) =>
        {
            var path = _temp.File($"part-{i}.safetensors");
            SafeTensorsWriter.Write(path, part.Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, t.Bytes)));
            return path;
        }).ToArray();

        var (_, listening) = await StartAsync(["worker", "--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", $"api-e2e-{_id}-0,api-e2e-{_id}-1"], "listening on ", []);
        var workerUrl = listening["listening on ".Length..].Trim();
        var port = TestPorts.Free().ToString(CultureInfo.InvariantCulture);
        var ranks = await Task.WhenAll(Enumerable.Range(0, 2).Select(r => StartAsync(["serve", "--uds", _temp.File("rank-{rank}.sock")], "serving rank ", new()
        {
            ["RANK"] = r.ToString(CultureInfo.InvariantCulture),
            ["WORLD_SIZE"] = "2",
            ["MASTER_ADDR"] = "127.0.0.1",
            ["MASTER_PORT"] = port,
            ["CKPT_ENGINE_TOKEN"] = Token,
            ["CKPT_ENGINE_DEVICE_ID"] = $"api-e2e-{_id}-{r}",
            [P2PTransports.Variable] = transport,
        })));
        var clients = Enumerable.Range(0, 2).Select(r =>
        {
            Assert.Equal($"serving rank {r} on unix:{_temp.File($"rank-{r}.sock")}", ranks[r].Line);
            var http = EngineTrigger.UnixSocketClient(_temp.File($"rank-{r}.sock"));
            http.BaseAddress = new Uri("http://localhost");
            http.Timeout = TimeSpan.FromSeconds(60);
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Token);
            return http;
        }).ToArray();
        try
        {
            await OkAsync(clients[0], "/v1/checkpoints/step/files", RegisterBody.Files(files[0], files[1]));
            await OkAsync(clients[1], "/v1/checkpoints/step/files", RegisterBody.Files(files[2], files[3]));
            var gathered = await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/gather-metas")));
            Assert.All(gathered, g => Assert.Equal(tensors.Length, g.GetProperty("tensors").GetInt32()));

            foreach (var (body, mode) in new[] { ($"{{\"update_url\": \"{workerUrl}\", \"timeout\": 30}}", "broadcast"), ($"{{\"ranks\": [0, 1], \"update_url\": \"{workerUrl}\", \"timeout\": 30, \"p2p_transport\": \"{transport}\"}}", "p2p") })
            {
                var reports = await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/update", body)));
                Assert.All(reports, r => Assert.Equal((mode, tensors.Sum(t => t.Bytes.LongLength)), (r.GetProperty("mode").GetString(), r.GetProperty("bytes").GetInt64())));
                Assert.All(reports, r => Assert.Equal(mode == "p2p" ? transport : null, r.TryGetProperty("p2p_transport", out var t) ? t.GetString() : null));
                using var http = new HttpClient { BaseAddress = new Uri(workerUrl) };
                var digest = await http.GetFromJsonAsync<JsonElement>("/v1/weights/digest", TestContext.Current.CancellationToken);
                var expected = tensors.ToDictionary(t => t.Name, t => t.Sha256).OrderBy(kv => kv.Key, StringComparer.Ordinal);
                Assert.All(digest.GetProperty("shards").EnumerateArray(), s => Assert.Equal(expected,
                    s.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!).OrderBy(kv => kv.Key, StringComparer.Ordinal)));
            }
        }
        finally
        {
            foreach (var c in clients)
            {
                c.Dispose();
            }
        }

        // SIGTERM: both ranks stop cleanly and remove their sockets.
        foreach (var (p, _) in ranks)
        {
            using var kill = Process.Start("kill", ["-TERM", p.Id.ToString(CultureInfo.InvariantCulture)]);
            await kill.WaitForExitAsync(TestContext.Current.CancellationToken);
        }
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        deadline.CancelAfter(TimeSpan.FromSeconds(30));
        foreach (var (p, _) in ranks)
        {
            await p.WaitForExitAsync(deadline.Token);
            Assert.Equal(0, p.ExitCode);
        }
        Assert.Empty(Directory.GetFiles(_temp.Path, "*.sock"));
    }

    /// <summary>
    /// The operator's view of a serve rank: <c>status</c> (a process, with the world's token) shows no running update and the last
    /// update's stages; <c>/metrics</c> after a real update and a failed one exports every metric the Grafana dashboard queries.
    /// </summary>
    [Fact]
    public async Task ServeRank_StatusShowsTheLastUpdate_AndMetricsCarryEveryDashboardMetric()
    {
        var tensors = Enumerable.Range(0, 6).Select(i => TestTensor.Random($"layers.{i}.w", DType.BF16, [64, 32])).ToArray();
        var file = _temp.File("model.safetensors");
        SafeTensorsWriter.Write(file, tensors.Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, t.Bytes)));
        var (_, listening) = await StartAsync(["worker", "--listen", "127.0.0.1:0", "--tp", "1", "--device-ids", $"api-status-{_id}-0"], "listening on ", []);
        var workerUrl = listening["listening on ".Length..].Trim();
        var socket = _temp.File("rank-0.sock");
        await StartAsync(["serve", "--uds", socket], "serving rank ", new()
        {
            ["RANK"] = "0",
            ["WORLD_SIZE"] = "1",
            ["MASTER_ADDR"] = "127.0.0.1",
            ["MASTER_PORT"] = TestPorts.Free().ToString(CultureInfo.InvariantCulture),
            ["CKPT_ENGINE_TOKEN"] = Token,
            ["CKPT_ENGINE_DEVICE_ID"] = $"api-status-{_id}-0",
        });
        using var http = EngineTrigger.UnixSocketClient(socket);
        http.BaseAddress = new Uri("http://localhost");
        http.Timeout = TimeSpan.FromSeconds(60);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Token);

        var withToken = new Dictionary<string, string> { ["CKPT_ENGINE_TOKEN"] = Token };
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(withToken, null, "status", "--uds", socket);
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("no update running", stdout, StringComparison.Ordinal);
        Assert.Contains("no update finished yet", stdout, StringComparison.Ordinal);

        await OkAsync(http, "/v1/checkpoints/step/files", RegisterBody.Files(file));
        await OkAsync(http, "/v1/checkpoints/step/gather-metas");
        var report = await OkAsync(http, "/v1/checkpoints/step/update", $"{{\"update_url\": \"{workerUrl}\", \"timeout\": 30}}");
        var (failed, _) = await PostAsync(http, "/v1/checkpoints/step/update", "{\"update_url\": \"http://127.0.0.1:9/\", \"timeout\": 30}");
        Assert.Equal(HttpStatusCode.InternalServerError, failed); // No engine there: a failure with its cause.

        (code, stdout, stderr) = await CkptEngineScript.RunAsync(withToken, null, "status", "--uds", socket);
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("rank 0 of 1", stdout, StringComparison.Ordinal);
        Assert.Contains("no update running", stdout, StringComparison.Ordinal);
        Assert.Contains($"last update of 'step' (broadcast): {ByteSize.Format(tensors.Sum(t => t.Bytes.LongLength))} in ", stdout, StringComparison.Ordinal);
        var stages = report.GetProperty("stages");
        foreach (var (stage, key) in new[] { ("h2d", "h2d_seconds"), ("broadcast", "broadcast_seconds"), ("reload", "reload_seconds") })
        {
            Assert.Matches($@"\| {stage}\s+\|\s+{stages.GetProperty(key).GetDouble().ToString("F3", CultureInfo.InvariantCulture)} \|", stdout);
        }
        // The same endpoint and token as the rest of the API: without the token, a clear refusal.
        (code, _, stderr) = await CkptEngineScript.RunAsync(new Dictionary<string, string> { ["CKPT_ENGINE_TOKEN"] = "" }, null, "status", "--uds", socket);
        Assert.Equal(1, code);
        Assert.Contains("answered 401: missing or wrong token", stderr, StringComparison.Ordinal);

        using var response = await http.GetAsync("/metrics", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var metrics = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.Equal(1, PrometheusText.Value(metrics, "ckpt_engine_update_failures_total", ("rank", "0"), ("cause", "engine")));
        var exported = PrometheusText.Samples(metrics).Select(s => s.Name).ToHashSet(StringComparer.Ordinal);
        using var dashboard = JsonDocument.Parse(File.ReadAllText(Path.Combine(CkptEngineScript.RepoRoot(), "docs", "grafana-dashboard.json")));
        var used = Expressions(dashboard.RootElement).SelectMany(e => System.Text.RegularExpressions.Regex.Matches(e, @"\bckpt_engine_[a-z0-9_]+").Select(m => m.Value)).ToHashSet(StringComparer.Ordinal);
        Assert.True(used.Count >= 10, string.Join(", ", used));
        var missing = used.Where(name => !exported.Contains(name)).Order(StringComparer.Ordinal).ToList();
        Assert.True(missing.Count == 0, $"the dashboard queries metrics /metrics does not export: {string.Join(", ", missing)}\n{metrics}");
    }

    /// <summary>Every query of a Grafana dashboard: the panels' target expressions and the variables' queries.</summary>
    private static IEnumerable<string> Expressions(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().SelectMany(p => p.Name is "expr" or "query" && p.Value.ValueKind == JsonValueKind.String ? [p.Value.GetString()!] : Expressions(p.Value)),
        JsonValueKind.Array => e.EnumerateArray().SelectMany(Expressions),
        _ => [],
    };

    private static async Task<(HttpStatusCode Status, string Body)> PostAsync(HttpClient http, string path, string body)
    {
        using var content = new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(path, content, TestContext.Current.CancellationToken);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task CorruptedTensor_VerifiedUpdateFailsOnEveryRankNamingIt_UnverifiedOneIsCaughtByTheVerifyCommand()
    {
        // Projections that --shard-by-tp slices by rows (q) and by columns (o), and a tensor every shard keeps whole.
        string[] kinds = ["self_attn.q_proj.weight", "self_attn.o_proj.weight", "norm.weight"];
        var tensors = Enumerable.Range(0, 12).Select(i => TestTensor.Random($"layers.{i / 3}.{kinds[i % 3]}", i % 2 == 0 ? DType.BF16 : DType.F32, [16 + (2 * i), 8])).ToArray();
        var files = tensors.Chunk(6).Select((part, i) =>
        {
            var path = _temp.File($"part-{i}.safetensors");
            SafeTensorsWriter.Write(path, part.Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, t.Bytes)));
            return path;
        }).ToArray();
        var victim = tensors[7].Name;
        var devices = $"verify-{_id}-0,verify-{_id}-1";
        var (corrupting, listening) = await StartAsync(["worker", "--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", devices, "--corrupt-tensor", victim], "listening on ", []);
        var workerUrl = listening["listening on ".Length..].Trim();
        var port = TestPorts.Free().ToString(CultureInfo.InvariantCulture);
        var ranks = await Task.WhenAll(Enumerable.Range(0, 2).Select(r => StartAsync(["serve", "--listen", "127.0.0.1:0"], "serving rank ", new()
        {
            ["RANK"] = r.ToString(CultureInfo.InvariantCulture),
            ["WORLD_SIZE"] = "2",
            ["MASTER_ADDR"] = "127.0.0.1",
            ["MASTER_PORT"] = port,
            ["CKPT_ENGINE_DEVICE_ID"] = $"verify-{_id}-{r}",
        })));
        var apis = ranks.Select(r => r.Line[(r.Line.LastIndexOf(' ') + 1)..]).ToArray();
        var clients = apis.Select(a => new HttpClient { BaseAddress = new Uri(a), Timeout = TimeSpan.FromSeconds(60) }).ToArray();
        try
        {
            await OkAsync(clients[0], "/v1/checkpoints/step/files", RegisterBody.Files(files[0]));
            await OkAsync(clients[1], "/v1/checkpoints/step/files", RegisterBody.Files(files[1]));
            await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/gather-metas")));

            // The API reports the checksum of every tensor (all ranks' after the gather): the bytes' CRC-32.
            var described = await clients[1].GetFromJsonAsync<JsonElement>("/v1/checkpoints/step", TestContext.Current.CancellationToken);
            Assert.Equal("metas", described.GetProperty("source").GetString());
            Assert.Equal(tensors.ToDictionary(t => t.Name, t => ReferenceCrc32.Of(t.Bytes).ToString("x8", CultureInfo.InvariantCulture)).OrderBy(kv => kv.Key, StringComparer.Ordinal),
                described.GetProperty("crc32").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!).OrderBy(kv => kv.Key, StringComparer.Ordinal));

            // Verified: every rank fails, naming the tensor, the rank whose worker found it and that worker's device.
            var failed = await Task.WhenAll(clients.Select(c => PostAsync(c, "/v1/checkpoints/step/update", $"{{\"update_url\": \"{workerUrl}\", \"timeout\": 30, \"verify\": true}}")));
            Assert.All(failed, f =>
            {
                Assert.Equal(HttpStatusCode.InternalServerError, f.Status);
                Assert.Matches($"rank [01] failed at reloading bucket \\d+: load of bucket \\d+: tensor '{victim}' on device 'verify-{_id}-[01]' has crc32 [0-9a-f]{{8}}, expected [0-9a-f]{{8}}", f.Body);
            });

            // Unverified: the update succeeds, and the comparison afterwards names the tensor on both devices.
            await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/update", $"{{\"update_url\": \"{workerUrl}\", \"timeout\": 30}}")));
            var (code, stdout, _) = InProcessCli.Run("verify", "--api", apis[0], "--engine", workerUrl, "step");
            Assert.Equal(1, code);
            Assert.Contains($"mismatch: tensor '{victim}' on device 'verify-{_id}-0': holds crc32 ", stdout, StringComparison.Ordinal);
            Assert.Contains($"mismatch: tensor '{victim}' on device 'verify-{_id}-1': holds crc32 ", stdout, StringComparison.Ordinal);
            Assert.Contains("2 mismatch(es) in 'step' (24 compared)", stdout, StringComparison.Ordinal);

            // A worker that corrupts nothing and keeps slices: the verified update succeeds, and the comparison finds every
            // whole tensor equal on both devices and every sliced one equal once reassembled (4 × 2 + 8).
            corrupting.Kill(entireProcessTree: true);
            await corrupting.WaitForExitAsync(TestContext.Current.CancellationToken);
            var (_, clean) = await StartAsync(["worker", "--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", devices, "--shard-by-tp"], "listening on ", []);
            var cleanUrl = clean["listening on ".Length..].Trim();
            var full = await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/update", $"{{\"update_url\": \"{cleanUrl}\", \"timeout\": 30, \"verify\": true}}")));
            (code, stdout, _) = InProcessCli.Run("verify", "--api", apis[1], "--engine", cleanUrl, "step");
            Assert.True(code == 0, stdout);
            Assert.Contains("ok: 16 tensor checksums of 'step' match", stdout, StringComparison.Ordinal);

            // Shard-aware: having seen the layout, each shard declares the slices it keeps, and its rank sends it only those
            // (half of every q and o projection); what the shards hold is the same, so the comparison still finds all 16 equal.
            var parts = await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/update", $"{{\"update_url\": \"{cleanUrl}\", \"timeout\": 30, \"verify\": true}}")));
            var sliced = tensors.Where(t => !t.Name.EndsWith("norm.weight", StringComparison.Ordinal)).Sum(t => (long)t.Bytes.Length);
            Assert.All(full, r => Assert.Equal(tensors.Sum(t => (long)t.Bytes.Length), r.GetProperty("bytes").GetInt64()));
            Assert.All(parts, r => Assert.Equal(tensors.Sum(t => (long)t.Bytes.Length) - (sliced / 2), r.GetProperty("bytes").GetInt64()));
            (code, stdout, _) = InProcessCli.Run("verify", "--api", apis[1], "--engine", cleanUrl, "step");
            Assert.True(code == 0, stdout);
            Assert.Contains("ok: 16 tensor checksums of 'step' match", stdout, StringComparison.Ordinal);
        }
        finally
        {
            foreach (var c in clients)
            {
                c.Dispose();
            }
        }
    }
}
