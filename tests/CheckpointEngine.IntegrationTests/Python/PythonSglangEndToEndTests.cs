using System.Text.Json;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.Memory;

namespace CheckpointEngine.IntegrationTests.Python;

/// <summary>
/// <c>ckpt-engine update</c> (its default <c>--engine auto</c>) against a stand-in shaped like SGLang
/// (python/tests/e2e_sglang.py: SGLang's HTTP surface before and after its first weights, model runners calling
/// the package's drop-in through the <c>checkpoint_engine.worker</c> shim): the update recognises SGLang, posts its
/// body with the checkpoint's name as weight_version, and the second update is shard-aware.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class PythonSglangEndToEndTests(PythonTorch torch) : IClassFixture<PythonTorch>, IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-py-sglang-").FullName;
    private PythonEngine? _engine;

    private Dictionary<string, string> Devices => new() { [CheckpointEngine.Runtime.RankConfig.DeviceIdVariable] = $"sgl-{Path.GetFileName(_dir)}-{{local_rank}}" };

    public void Dispose()
    {
        _engine?.Dispose();
        SharedMemorySegment.SweepAbandoned(TimeSpan.Zero);
        Directory.Delete(_dir, true);
    }

    [Fact]
    public async Task Update_AutoDetectsSglang_PostsWeightVersion_SecondUpdateIsShardAware()
    {
        var engine = _engine = await PythonEngine.StartScriptAsync("e2e_sglang.py", Devices, "--tp", "2", "--checkpoint-out", _dir, "--seeds", "2,3");
        using var http = new HttpClient();
        foreach (var seed in (int[])[2, 3])
        {
            var (code, stdout, stderr) = await CkptEngineScript.RunAsync(Devices, null, "launch", "--nproc", "2", "--", "update",
                "--checkpoint-path", Path.Combine(_dir, $"seed-{seed}"), "--checkpoint-name", $"step-{seed}", "--endpoint", engine.Url,
                "--inference-parallel-size", "2", "--timeout", "60");
            Assert.True(code == 0, $"update of seed {seed} exited {code} (torch {torch.TorchVersion}):\n{stderr}{stdout}\n{engine.Log()}");
            Assert.Contains("[rank 0] wait for the engine (detected sglang): ", stdout, StringComparison.Ordinal);

            using var doc = JsonDocument.Parse(await http.GetStringAsync($"{engine.Url}/v1/check/{seed}", TestContext.Current.CancellationToken));
            Assert.Equal($"step-{seed}", doc.RootElement.GetProperty("weight_version").GetString());
            var workers = doc.RootElement.GetProperty("workers").EnumerateArray().ToList();
            Assert.Equal(2, workers.Count);
            foreach (var w in workers)
            {
                var device = w.GetProperty("device_id").GetString();
                Assert.True(w.GetProperty("differ").GetArrayLength() == 0, $"{device} after seed {seed} differs from its full load in {w.GetProperty("differ")}");
                Assert.Equal(seed - 1, w.GetProperty("post_loads").GetInt32());
                var (received, full) = (w.GetProperty("last_bytes").GetInt64(), w.GetProperty("full_bytes").GetInt64());
                if (seed == 2)
                {
                    Assert.Equal(full, received); // the first update shows the layout: everything
                }
                else
                {
                    Assert.Equal(w.GetProperty("declared_bytes").GetInt64(), received);
                    Assert.True(received < full * 0.7, $"{device} received {received} of {full} bytes");
                }
            }
        }
    }
}
