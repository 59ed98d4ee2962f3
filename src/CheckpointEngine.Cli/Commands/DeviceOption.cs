using System.CommandLine;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Commands;

/// <summary>The <c>--device host|cuda|auto</c> option the rank-running commands share, and the worker device ids that go with it.</summary>
internal static class DeviceOption
{
    public static Option<string?> Create()
    {
        var option = new Option<string?>("--device")
        {
            Description = $"device backend: host, cuda or auto (default: {RankConfig.DeviceVariable}, else cuda when a GPU is present, else host)",
        };
        option.AcceptOnlyFromAmong("host", "cuda", "auto");
        return option;
    }

    /// <summary>
    /// The device id of each of <paramref name="ranks"/> local ranks, for a worker started alongside them: the
    /// GPUs' UUIDs (rank r drives CUDA device r), or host ids made unique with <paramref name="prefix"/>.
    /// </summary>
    public static List<string> WorkerIds(DeviceKind kind, int ranks, string prefix)
    {
        if (kind == DeviceKind.Host)
        {
            return [.. Enumerable.Range(0, ranks).Select(r => $"{prefix}-{Environment.ProcessId}-{r}")];
        }
        var cuda = CudaDriver.Instance;
        var count = cuda.DeviceCount();
        if (ranks > count)
        {
            throw new CheckpointEngineException($"{ranks} ranks need {ranks} GPUs with --device cuda; this machine shows {count}");
        }
        return [.. Enumerable.Range(0, ranks).Select(r => cuda.DeviceUuid(cuda.Device(r)))];
    }

    /// <summary>The backend a command of this process uses (its --device option, else <c>CKPT_ENGINE_DEVICE</c>).</summary>
    public static DeviceKind Choose(string? option) => Backend.Choose(option, Environment.GetEnvironmentVariable(RankConfig.DeviceVariable));

    /// <summary>What the ranks of a launched run get so that they use <paramref name="kind"/> too.</summary>
    public static KeyValuePair<string, string?> RankVariable(DeviceKind kind) => new(RankConfig.DeviceVariable, kind == DeviceKind.Cuda ? "cuda" : "host");
}
