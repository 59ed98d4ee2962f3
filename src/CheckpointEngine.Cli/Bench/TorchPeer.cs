using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// The peer in the benchmark: what a user would do without this project, measured in the same run on the same checkpoint —
/// torch.distributed (gloo on CPU) broadcasts from the owners into every rank's model, per tensor and bucketed
/// (<c>bench/torch_peer.py</c>, carried inside this assembly). Runs only where <c>/usr/bin/python3</c> imports torch.
/// </summary>
internal static class TorchPeer
{
    public const string Python = "/usr/bin/python3";

    /// <summary>One measurement: the per-model bytes and the median (and warm-up) seconds of each way.</summary>
    public sealed record Result(int Ranks, long Size, long Bytes, double PerTensor, double PerTensorFirst, double Bucketed, double BucketedFirst, long BucketSize)
    {
        public double PerTensorGbps => Bytes / PerTensor / 1e9;

        public double BucketedGbps => Bytes / Bucketed / 1e9;
    }

    private static bool? _available;

    /// <summary>Whether <see cref="Python"/> imports torch (asked once).</summary>
    public static bool Available => _available ??= Run(["-c", "import torch, torch.distributed"], TimeSpan.FromSeconds(60)).ExitCode == 0;

    /// <summary>Measures <paramref name="ranks"/> processes on the checkpoint in <paramref name="dir"/>; null (and a line on <paramref name="progress"/>) when it cannot.</summary>
    public static Result? Measure(string dir, int ranks, long size, int repeat, TextWriter progress)
    {
        var script = Path.Combine(Path.GetTempPath(), $"ckpt-engine-torch-peer-{Environment.ProcessId}.py");
        try
        {
            using (var resource = typeof(TorchPeer).Assembly.GetManifestResourceStream("torch_peer.py")
                ?? throw new InvalidOperationException("the torch peer script is not in this build"))
            using (var file = File.Create(script))
            {
                resource.CopyTo(file);
            }
            var timeout = TimeSpan.FromSeconds(120 + 60 * (size >> 30) * (repeat + 1));
            var (code, output, error) = Run([script, "--checkpoint", dir, "--ranks", ranks.ToString(CultureInfo.InvariantCulture),
                "--repeat", repeat.ToString(CultureInfo.InvariantCulture), "--timeout", ((int)timeout.TotalSeconds).ToString(CultureInfo.InvariantCulture)], timeout + TimeSpan.FromSeconds(30));
            if (code != 0)
            {
                progress.WriteLine($"bench: torch peer, {ranks} ranks: failed (exit {code}): {error.Trim().Split('\n').LastOrDefault()}");
                return null;
            }
            using var doc = JsonDocument.Parse(output.Trim().Split('\n')[^1]);
            var root = doc.RootElement;
            double Median(string way) => Spread.Of(root.GetProperty(way).GetProperty("seconds").EnumerateArray().Select(e => e.GetDouble())).Median;
            double First(string way) => root.GetProperty(way).GetProperty("first").GetDouble();
            return new Result(ranks, size, root.GetProperty("bytes").GetInt64(), Median("per_tensor"), First("per_tensor"), Median("bucketed"), First("bucketed"),
                root.GetProperty("bucket_size").GetInt64());
        }
        catch (Exception e) when (e is IOException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            progress.WriteLine($"bench: torch peer, {ranks} ranks: no result ({e.Message})");
            return null;
        }
        finally
        {
            File.Delete(script);
        }
    }

    /// <summary>Runs <see cref="Python"/>; a run past <paramref name="timeout"/> is killed with its children.</summary>
    private static (int ExitCode, string Output, string Error) Run(IEnumerable<string> args, TimeSpan timeout)
    {
        if (!File.Exists(Python))
        {
            return (-1, "", $"{Python} does not exist");
        }
        var start = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return (-1, "", $"no result within {timeout.TotalSeconds:F0} s");
        }
        return (process.ExitCode, output.Result, error.Result);
    }
}
