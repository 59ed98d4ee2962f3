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
        foreach (var p in _processes)
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit();
            }
            p.Dispose();
        }
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

    [Fact]
    public async Task TwoServeRanks_BroadcastThenP2PUpdate_ThroughTheApi_WorkerHoldsEveryTensor()
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

            foreach (var (body, mode) in new[] { ($"{{\"update_url\": \"{workerUrl}\", \"timeout\": 30}}", "broadcast"), ($"{{\"ranks\": [0, 1], \"update_url\": \"{workerUrl}\", \"timeout\": 30}}", "p2p") })
            {
                var reports = await Task.WhenAll(clients.Select(c => OkAsync(c, "/v1/checkpoints/step/update", body)));
                Assert.All(reports, r => Assert.Equal((mode, tensors.Sum(t => t.Bytes.LongLength)), (r.GetProperty("mode").GetString(), r.GetProperty("bytes").GetInt64())));
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
}
