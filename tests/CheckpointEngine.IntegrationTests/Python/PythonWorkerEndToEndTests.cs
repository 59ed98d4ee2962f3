using CheckpointEngine.Memory;
using CheckpointEngine.Worker;
using System.Security.Cryptography;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Python;

/// <summary>
/// The C# parameter server (2 ranks through <c>./ckpt-engine launch ... update</c>) against a Python
/// engine process (python/tests/e2e_worker.py: two devices, like a tensor-parallel-2 vLLM, each a small
/// transformer-like torch model loading through the package's vLLM extension).
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class PythonWorkerEndToEndTests(PythonTorch torch) : IClassFixture<PythonTorch>, IDisposable
{
    private const string SegmentPrefix = "/dev/shm/ckpt-engine-dev-";

    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-py-e2e-").FullName;
    private PythonEngine? _engine;

    private string CheckpointDir => Path.Combine(_dir, "ckpt");

    /// <summary>Device ids of this test run only, "{local_rank}" filled in per rank (and per worker by the extension).</summary>
    private Dictionary<string, string> Devices => new() { [CheckpointEngine.Runtime.RankConfig.DeviceIdVariable] = $"py-{Path.GetFileName(_dir)}-{{local_rank}}" };

    public void Dispose()
    {
        _engine?.Dispose();
        SharedMemorySegment.SweepAbandoned(TimeSpan.Zero); // Segments of ranks the launcher had to kill.
        Directory.Delete(_dir, true);
    }

    [Fact]
    public async Task Update_TwoRanks_ModelStateDictEqualsCheckpointBitExact()
    {
        var engine = _engine = await PythonEngine.StartAsync(Devices, "--devices", "2", "--checkpoint-out", CheckpointDir);
        var url = engine.Url;
        using var checkpoint = Checkpoint.Open(CheckpointDir);
        var expected = checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => Convert.ToHexStringLower(SHA256.HashData(e.File.View(e.Tensor).Span)));
        var tensors = checkpoint.AllTensors().Select(e => e.Tensor).ToList();
        Assert.Superset(new HashSet<DType> { DType.BF16, DType.F16, DType.F32, DType.F64, DType.I8, DType.I16, DType.I32, DType.I64, DType.U8, DType.BOOL },
            tensors.Select(t => t.DType).ToHashSet());
        Assert.Contains(tensors, t => t.Shape.Length == 0);
        Assert.Contains(tensors, t => t.ByteLength == 0);
        foreach (var (_, shard) in await engine.DigestsAsync())
        {
            Assert.All(tensors.Where(t => t.ByteLength > 0), t => Assert.NotEqual(expected[t.Name], shard[t.Name])); // The update has something to do.
        }

        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(Devices, null, "launch", "--nproc", "2", "--", "update", "--checkpoint-path", CheckpointDir,
            "--endpoint", url, "--inference-parallel-size", "2", "--timeout", "60", "--repeat", "2");

        Assert.True(code == 0, $"update exited {code} (torch {torch.TorchVersion}):\n{stderr}{stdout}\n{engine.Log()}");
        Assert.Contains("[rank 1] result method=broadcast", stdout);
        var shards = await engine.DigestsAsync();
        Assert.Equal(2, shards.Count);
        foreach (var (_, shard) in shards)
        {
            Assert.Equal(expected.OrderBy(kv => kv.Key, StringComparer.Ordinal), shard.OrderBy(kv => kv.Key, StringComparer.Ordinal));
        }
        // The engine keeps its host mappings between updates while their segments exist: these ranks have exited, so its sweep lets go.
        await AssertMappingsGoAsync();
    }

    [Fact]
    public async Task Update_LoaderRaises_RanksFailWithThePythonError_AndTheMappingIsReleased()
    {
        var engine = _engine = await PythonEngine.StartAsync(Devices, "--devices", "2", "--checkpoint-out", CheckpointDir, "--fail-on", "layers.1.o_proj.weight");
        var url = engine.Url;

        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(Devices, null, "launch", "--nproc", "2", "--", "update", "--checkpoint-path", CheckpointDir,
            "--endpoint", url, "--inference-parallel-size", "2", "--timeout", "60");

        Assert.True(code != 0, $"update succeeded though the loader raises:\n{stdout}");
        var output = stderr + stdout;
        // Every rank raises the agreed error, but the launcher stops the others once the first has failed: at least one says it.
        Assert.Matches(@"\[rank \d\] error: rank \d failed at reloading bucket \d+: .*RuntimeError: refusing tensor layers\.1\.o_proj\.weight: injected loader failure", output);
        Assert.Empty(SegmentMappings());
        using var http = new HttpClient();
        Assert.True((await http.GetAsync(url + "/health", TestContext.Current.CancellationToken)).IsSuccessStatusCode, "the engine survives a failed update");
    }

    /// <summary>The engine process's mappings of device segments.</summary>
    private List<string> SegmentMappings() => _engine!.Mappings(SegmentPrefix);

    /// <summary>The engine unmaps segments whose ranks are gone within its sweep (2 s); allow ten.</summary>
    private async Task AssertMappingsGoAsync()
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (SegmentMappings().Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Empty(SegmentMappings());
    }
}
