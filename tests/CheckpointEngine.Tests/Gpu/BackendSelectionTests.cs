using CheckpointEngine.Interop;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Tests.Gpu;

/// <summary>Which backend a rank picks, and how a missing GPU library is reported (runs everywhere).</summary>
[Collection(nameof(EnvironmentVariableTests))]
public sealed class BackendSelectionTests
{
    [Theory]
    [InlineData("host", false, DeviceKind.Host)]
    [InlineData("host", true, DeviceKind.Host)]
    [InlineData("cuda", false, DeviceKind.Cuda)]
    [InlineData("CUDA", false, DeviceKind.Cuda)]
    [InlineData("auto", true, DeviceKind.Cuda)]
    [InlineData("auto", false, DeviceKind.Host)]
    public void Choose_Option_WinsOverEverything(string option, bool gpu, DeviceKind expected)
    {
        Assert.Equal(expected, Backend.Choose(option, option == "host" ? "cuda" : "host", () => gpu));
    }

    [Theory]
    [InlineData(null, true, DeviceKind.Cuda)]
    [InlineData(null, false, DeviceKind.Host)]
    [InlineData("host", true, DeviceKind.Host)]
    [InlineData("cuda", false, DeviceKind.Cuda)]
    [InlineData(" auto ", true, DeviceKind.Cuda)]
    public void Choose_NoOption_TakesTheVariableThenThePresenceOfAGpu(string? variable, bool gpu, DeviceKind expected)
    {
        var config = RankConfig.FromEnvironment(new Dictionary<string, string?> { [RankConfig.DeviceVariable] = variable });
        Assert.Equal(expected, Backend.Choose(null, config.Device, () => gpu));
    }

    [Fact]
    public void Choose_UnknownName_NamesWhereItCameFrom()
    {
        var e = Assert.Throws<CheckpointEngineException>(() => Backend.Choose("tpu", "host", () => false));
        Assert.Equal("--device=tpu is not a device backend: use host, cuda or auto", e.Message);
        e = Assert.Throws<CheckpointEngineException>(() => Backend.Choose(null, "rocm", () => false));
        Assert.Equal($"{RankConfig.DeviceVariable}=rocm is not a device backend: use host, cuda or auto", e.Message);
    }

    [Theory]
    [InlineData(0, 8, 0)]
    [InlineData(5, 8, 5)]
    [InlineData(5, 1, 0)] // One GPU visible per process (CUDA_VISIBLE_DEVICES set by the launcher).
    [InlineData(9, 8, 9)] // More ranks than GPUs: CudaDevice refuses ordinal 9 and names the count.
    public void CudaOrdinal_IsTheLocalRankUnlessOneGpuIsVisible(int localRank, int visible, int expected) =>
        Assert.Equal(expected, Backend.CudaOrdinal(localRank, visible));

    [Fact]
    public void Load_NoCandidateLoads_ListsEveryPathAndTheWayOut()
    {
        var e = Assert.Throws<BackendUnavailableException>(() => NativeLibraries.Load("The CUDA driver (libcuda.so.1)", "CKPT_ENGINE_CUDA_LIBRARY",
            ["/nonexistent/a/libcuda.so.1", "/nonexistent/b/libcuda.so.1"]));
        Assert.StartsWith("The CUDA driver (libcuda.so.1) is not available on this machine: tried /nonexistent/a/libcuda.so.1 (", e.Message, StringComparison.Ordinal);
        Assert.Contains("; /nonexistent/b/libcuda.so.1 (", e.Message, StringComparison.Ordinal);
        Assert.EndsWith("Set CKPT_ENGINE_CUDA_LIBRARY to its path, or choose the host backend (--device host)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Candidates_VariableSet_OnlyThatPath()
    {
        using var _ = new ScopedVariable("CKPT_TEST_LIBRARY", "/opt/x/libnccl.so.2");
        Assert.Equal(["/opt/x/libnccl.so.2"], NativeLibraries.Candidates("CKPT_TEST_LIBRARY", ["libnccl.so.2"]));
        Environment.SetEnvironmentVariable("CKPT_TEST_LIBRARY", null);
        Assert.Equal(["libnccl.so.2", "/b"], NativeLibraries.Candidates("CKPT_TEST_LIBRARY", ["libnccl.so.2", "/b"]));
    }

    [Fact]
    public void NcclPaths_IncludeThePythonWheelWhereOneIsInstalled()
    {
        using var temp = new TempDirectory();
        var lib = Path.Combine(temp.Path, "lib");
        var wheel = Path.Combine(lib, "python3.11", "site-packages", "nvidia", "nccl", "lib");
        Directory.CreateDirectory(wheel);
        File.WriteAllBytes(Path.Combine(wheel, "libnccl.so.2"), []);
        using var _ = new ScopedVariable("VIRTUAL_ENV", temp.Path);
        var paths = Interop.Nccl.Nccl.DefaultPaths();
        Assert.Equal("libnccl.so.2", paths[0]);
        Assert.Contains(Path.Combine(wheel, "libnccl.so.2"), paths);
    }

    [Fact]
    public async Task Update_CudaWithoutTheDriver_FailsWithOneLineListingThePathsTried()
    {
        using var temp = new TempDirectory();
        var env = new Dictionary<string, string>
        {
            ["CKPT_ENGINE_CUDA_LIBRARY"] = "/nonexistent/libcuda.so.1",
            ["WORLD_SIZE"] = "1", ["RANK"] = "0", ["MASTER_ADDR"] = "127.0.0.1", ["MASTER_PORT"] = "0",
        };
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(env, null,
            "update", "--device", "cuda", "--checkpoint-path", temp.Path, "--endpoint", "http://127.0.0.1:9", "--timeout", "10");
        Assert.True(code == 1, $"exit {code}\n{stdout}\n{stderr}");
        Assert.StartsWith("error: The CUDA driver (libcuda.so.1) is not available on this machine: tried /nonexistent/libcuda.so.1 (", stderr, StringComparison.Ordinal);
        Assert.Contains("Set CKPT_ENGINE_CUDA_LIBRARY to its path, or choose the host backend (--device host)", stderr, StringComparison.Ordinal);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    /// <summary>Sets an environment variable for one test and restores it after.</summary>
    private sealed class ScopedVariable : IDisposable
    {
        private readonly string _name;
        private readonly string? _old;

        public ScopedVariable(string name, string? value)
        {
            _name = name;
            _old = Environment.GetEnvironmentVariable(name);
            Environment.SetEnvironmentVariable(name, value);
        }

        public void Dispose() => Environment.SetEnvironmentVariable(_name, _old);
    }
}

/// <summary>Tests that change process environment variables run one at a time.</summary>
[CollectionDefinition(nameof(EnvironmentVariableTests), DisableParallelization = true)]
public sealed class EnvironmentVariableTests;
