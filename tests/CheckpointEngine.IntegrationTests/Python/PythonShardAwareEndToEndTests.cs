using System.Text.Json;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.Memory;

namespace CheckpointEngine.IntegrationTests.Python;

/// <summary>
/// Shard-aware updates of a Python engine by the C# parameter server: two instances of the stand-in
/// tensor-parallel engine (python/tests/standin_engine.py, vLLM-like loaders) in one process, 2·TP ranks
/// through <c>./ckpt-engine launch ... update</c>. The first update delivers everything (the workers learn
/// the layout and record their loaders); the second, of another checkpoint, delivers only the recorded wants.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class PythonShardAwareEndToEndTests(PythonTorch torch) : IClassFixture<PythonTorch>, IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-py-shard-").FullName;
    private PythonEngine? _engine;

    private Dictionary<string, string> Devices => new() { [CheckpointEngine.Runtime.RankConfig.DeviceIdVariable] = $"py-{Path.GetFileName(_dir)}-{{local_rank}}" };

    public void Dispose()
    {
        _engine?.Dispose();
        SharedMemorySegment.SweepAbandoned(TimeSpan.Zero);
        Directory.Delete(_dir, true);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public async Task Update_TwoInstances_SecondUpdateCarriesOnlyRecordedWants_EveryRankEqualsItsFullLoad(int tp)
    {
        var engine = _engine = await PythonEngine.StartScriptAsync("e2e_sharded.py", Devices, "--tp", $"{tp}", "--instances", "2", "--checkpoint-out", _dir, "--seeds", "2,3");
        foreach (var seed in (int[])[2, 3])
        {
            var (code, stdout, stderr) = await CkptEngineScript.RunAsync(Devices, null, "launch", "--nproc", $"{2 * tp}", "--", "update",
                "--checkpoint-path", Path.Combine(_dir, $"seed-{seed}"), "--endpoint", engine.Url, "--inference-parallel-size", $"{tp}", "--timeout", "60");
            Assert.True(code == 0, $"update of seed {seed} exited {code} (torch {torch.TorchVersion}):\n{stderr}{stdout}\n{engine.Log()}");

            using var http = new HttpClient();
            using var doc = JsonDocument.Parse(await http.GetStringAsync($"{engine.Url}/v1/check/{seed}", TestContext.Current.CancellationToken));
            var workers = doc.RootElement.GetProperty("workers").EnumerateArray().ToList();
            Assert.Equal(2 * tp, workers.Count);
            foreach (var w in workers)
            {
                var device = w.GetProperty("device_id").GetString();
                Assert.True(w.GetProperty("differ").GetArrayLength() == 0, $"{device} after seed {seed} differs from its full load in {w.GetProperty("differ")}");
                var received = w.GetProperty("last_bytes").GetInt64();
                var full = w.GetProperty("full_bytes").GetInt64();
                if (seed == 2)
                {
                    Assert.Equal(full, received); // nothing declared yet: the whole checkpoint
                }
                else
                {
                    Assert.Equal(w.GetProperty("declared_bytes").GetInt64(), received); // exactly what its recorded wants name
                    Assert.True(received < full * 0.7, $"{device} received {received} of {full} bytes");
                    Assert.True(w.GetProperty("parts_in_place").GetInt32() > 0, $"{device} got no column slice in place"); // Ranks on one host: strided views.
                }
            }
        }
    }
}
