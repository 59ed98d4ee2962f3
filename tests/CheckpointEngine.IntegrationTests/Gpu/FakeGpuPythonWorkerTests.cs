using System.Security.Cryptography;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Python;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Gpu;

/// <summary>
/// The Python worker's CUDA IPC path without a GPU: two ranks of <c>launch ... update --device cuda</c> on the
/// stand-in driver and NCCL feed python/tests/e2e_worker.py, whose two workers are on cuda:0 and cuda:1 of the
/// same stand-in driver (<c>CKPT_ENGINE_CUDA_LIBRARY</c>; torch's own CUDA hidden). Each worker finds its
/// parameter server by the driver's GPU UUID, checks the attach's device, opens the 64-byte handle in the
/// device's primary context (pushed and popped), reads every tensor through the driver (cuMemcpyDtoH: this
/// torch cannot view device memory, the one difference from an engine on a GPU), and closes the handle and
/// releases the context at every release.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class FakeGpuPythonWorkerTests(PythonTorch torch) : IClassFixture<PythonTorch>, IDisposable
{
    /// <summary>Device memory of the stand-in driver is shared memory under this prefix; an open IPC handle is a mapping of it.</summary>
    private const string DeviceMemoryPrefix = "/dev/shm/fakecuda-";

    private readonly HashSet<string> _before = [.. FakeGpu.Leftovers()];
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-py-cuda-e2e-").FullName;
    private PythonEngine? _engine;

    private string CheckpointDir => Path.Combine(_dir, "ckpt");

    public void Dispose()
    {
        _engine?.Dispose();
        FakeGpu.RemoveLeftovers(_before);
        Directory.Delete(_dir, true);
    }

    [Fact]
    public async Task Update_CudaIpc_PythonWorkerOpensEveryHandle_StateDictEqualsCheckpointBitExact()
    {
        var environment = FakeGpu.Environment(2);
        var engine = _engine = await PythonEngine.StartAsync(new Dictionary<string, string>(environment) { ["CUDA_VISIBLE_DEVICES"] = "" },
            "--devices", "2", "--checkpoint-out", CheckpointDir, "--device", "cuda");
        using var checkpoint = Checkpoint.Open(CheckpointDir);
        var expected = checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => Convert.ToHexStringLower(SHA256.HashData(e.File.View(e.Tensor).Span)));
        var before = await engine.DigestsAsync();
        // The stand-in's UUIDs (bytes 0x10 * device + i, the run's salt in the last four), read by each worker through the driver: what the ranks' devices report.
        var salt = Convert.ToHexStringLower(BitConverter.GetBytes(uint.Parse(environment["FAKE_CUDA_UUID_SALT"], System.Globalization.CultureInfo.InvariantCulture)));
        Assert.Equal([$"GPU-00010203-0405-0607-0809-0a0b{salt}", $"GPU-10111213-1415-1617-1819-1a1b{salt}"], before.Select(s => s.DeviceId));
        Assert.All(before, s => Assert.Contains(expected, kv => kv.Value != s.Tensors[kv.Key])); // The update has something to do.

        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(environment, null, "launch", "--nproc", "2", "--", "update", "--device", "cuda",
            "--checkpoint-path", CheckpointDir, "--endpoint", engine.Url, "--inference-parallel-size", "2", "--timeout", "60", "--repeat", "2");

        Assert.True(code == 0, $"update exited {code} (torch {torch.TorchVersion}):\n{stderr}{stdout}\n{engine.Log()}");
        Assert.Contains("[rank 1] result method=broadcast", stdout);
        var after = await engine.DigestsAsync();
        Assert.Equal(2, after.Count);
        Assert.All(after, s => Assert.Equal(expected.OrderBy(kv => kv.Key, StringComparer.Ordinal), s.Tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal)));
        Assert.Empty(engine.Mappings(DeviceMemoryPrefix)); // Every handle the workers opened is closed again.
        Assert.Empty(FakeGpu.Leftovers().Except(_before)); // And the ranks could free the memory behind them.
    }
}
