using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace CheckpointEngine.IntegrationTests.Runtime;

/// <summary>
/// Starts rank processes (the CheckpointEngine.Tests.Rank program) on loopback with torchrun-style
/// variables and a free port, waits for all of them under a deadline, and kills whatever is left.
/// </summary>
internal static class RankCluster
{
    public sealed record Result(int Rank, int ExitCode, string Output)
    {
        public string Line(string prefix) => Output.Split('\n').FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal))?.Trim() ?? "";
    }

    /// <summary>Rank <paramref name="killed"/> was killed in the second update: every survivor did the first, failed the second naming it, and exited 3.</summary>
    public static void AssertKilledMidSecondUpdate(IReadOnlyList<Result> results, int killed)
    {
        Assert.Equal(137, results[killed].ExitCode);
        foreach (var r in results.Where(r => r.Rank != killed))
        {
            Assert.True(r.ExitCode == 3, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.StartsWith("update 1 ok", r.Line("update 1 "));
            Assert.StartsWith("update 2 failed", r.Line("update 2 "));
            Assert.Contains($"rank {killed}", r.Line("error"));
        }
    }

    /// <param name="ranks">World size.</param>
    /// <param name="args">Scenario and its arguments.</param>
    /// <param name="env">Per-rank extra variables (may return null).</param>
    /// <param name="waitFor">Ranks expected to exit by themselves (default all); the rest are killed once these have.</param>
    /// <param name="deadline">Past it, every rank still running is killed and reported with exit code −1.</param>
    /// <param name="killWhen">When this task completes, every rank is killed at once (as a machine failure would).</param>
    /// <param name="place">Rewrites a rank's start (e.g. to run inside a host of <see cref="Hosts.NetnsHosts"/>); the process must keep the started id.</param>
    public static async Task<Result[]> RunAsync(int ranks, string[] args, Func<int, IDictionary<string, string>?>? env = null,
        Func<int, bool>? waitFor = null, TimeSpan? deadline = null, Task? killWhen = null, Action<int, ProcessStartInfo>? place = null)
    {
        var port = TestPorts.Free();
        var processes = new List<Process>();
        try
        {
            for (var r = 0; r < ranks; r++)
            {
                var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
                psi.ArgumentList.Add(RankProgram());
                args.ToList().ForEach(psi.ArgumentList.Add);
                psi.Environment["RANK"] = r.ToString(System.Globalization.CultureInfo.InvariantCulture);
                psi.Environment["WORLD_SIZE"] = ranks.ToString(System.Globalization.CultureInfo.InvariantCulture);
                psi.Environment["MASTER_ADDR"] = "127.0.0.1";
                psi.Environment["MASTER_PORT"] = port.ToString(System.Globalization.CultureInfo.InvariantCulture);
                psi.Environment.Remove("CKPT_ENGINE_TOKEN");
                psi.Environment.Remove("CKPT_ENGINE_HOST_ID");
                foreach (var (k, v) in env?.Invoke(r) ?? new Dictionary<string, string>())
                {
                    psi.Environment[k] = v;
                }
                place?.Invoke(r, psi);
                processes.Add(Process.Start(psi)!);
            }
            var outputs = processes.Select(p => (Out: p.StandardOutput.ReadToEndAsync(), Err: p.StandardError.ReadToEndAsync())).ToList();
            _ = killWhen?.ContinueWith(_ => KillAll(processes), TaskScheduler.Default);
            using (var cts = new CancellationTokenSource(deadline ?? TimeSpan.FromSeconds(90)))
            {
                try
                {
                    await Task.WhenAll(processes.Where((_, r) => waitFor?.Invoke(r) ?? true).Select(p => p.WaitForExitAsync(cts.Token)));
                }
                catch (OperationCanceledException)
                {
                    // Reported below as exit code −1.
                }
            }
            var exitCodes = processes.Select(p => p.HasExited ? p.ExitCode : -1).ToList();
            KillAll(processes);
            var results = new Result[ranks];
            for (var r = 0; r < ranks; r++)
            {
                results[r] = new Result(r, exitCodes[r], await outputs[r].Out + await outputs[r].Err);
            }
            return results;
        }
        finally
        {
            KillAll(processes);
            processes.ForEach(p => p.Dispose());
        }
    }

    private static void KillAll(List<Process> processes)
    {
        lock (processes)
        {
            foreach (var p in processes.Where(p => !p.HasExited))
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit();
            }
        }
    }

    /// <summary>A start description for the rank program with other arguments (e.g. "cli worker ..."), output redirected.</summary>
    public static ProcessStartInfo Start(IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(RankProgram());
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        return psi;
    }

    private static string RankProgram()
    {
        var config = new DirectoryInfo(AppContext.BaseDirectory).Name; // artifacts/bin/<project>/<config>/
        var path = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "CheckpointEngine.Tests.Rank", config, "CheckpointEngine.Tests.Rank.dll"));
        return File.Exists(path) ? path : throw new FileNotFoundException("rank program not built", path);
    }

    /// <summary>Polls for a file that rank processes create (their state, seen from outside), failing if they stop first or past a deadline.</summary>
    public static async Task WaitForFileAsync(string path, Task<Result[]> running, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!File.Exists(path))
        {
            if (running.IsCompleted)
            {
                var results = await running;
                Assert.Fail($"the ranks stopped before {what}:\n" + string.Join("\n", results.Select(r => r.Output)));
            }
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"never: {what}");
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
    }
}
