using System.Diagnostics;
using System.Text;

namespace CheckpointEngine.Tests.Support;

/// <summary>Runs programs for tests, always under a deadline.</summary>
public static class TestProcess
{
    /// <summary>Kills every process (and its children) that is still running, waits for each, and disposes them all.</summary>
    public static void KillAndDispose(IEnumerable<Process> processes)
    {
        foreach (var p in processes)
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit();
            }
            p.Dispose();
        }
    }

    /// <summary>Runs a program to its end under a deadline (killing it past that); returns its exit code and its output, both streams.</summary>
    public static async Task<(int Code, string Output)> RunAsync(string program, IEnumerable<string> args, TimeSpan deadline,
        string? workingDirectory = null, IDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory ?? "" };
        args.ToList().ForEach(psi.ArgumentList.Add);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }
        using var p = Process.Start(psi)!;
        var output = new StringBuilder();
        p.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        p.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        using var cts = new CancellationTokenSource(deadline);
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
            lock (output)
            {
                return (-1, $"{program} {string.Join(' ', psi.ArgumentList)} ran past {deadline.TotalSeconds:F0} s and was killed\n{output}");
            }
        }
        await p.WaitForExitAsync(); // Drains the output events.
        lock (output)
        {
            return (p.ExitCode, output.ToString());
        }
    }
}
