using System.Diagnostics;

namespace CheckpointEngine.Tests.Hosting;

/// <summary>Runs <c>./ckpt-engine</c> at the repository root as users do (it builds the CLI on first use).</summary>
internal static class CkptEngineScript
{
    public static Task<(int Code, string Out, string Err)> RunAsync(Func<Process, Task>? whileRunning, params string[] args) =>
        RunAsync(null, whileRunning, args);

    public static async Task<(int Code, string Out, string Err)> RunAsync(IDictionary<string, string>? environment, Func<Process, Task>? whileRunning, params string[] args)
    {
        var psi = new ProcessStartInfo(Path.Combine(RepoRoot(), "ckpt-engine"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }
        args.ToList().ForEach(psi.ArgumentList.Add);
        using var p = Process.Start(psi)!;
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(3)); // The first call may build the CLI.
        var stdout = p.StandardOutput.ReadToEndAsync(cts.Token);
        var stderr = p.StandardError.ReadToEndAsync(cts.Token);
        try
        {
            if (whileRunning is not null)
            {
                await whileRunning(p).WaitAsync(cts.Token);
            }
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw;
        }
        return (p.ExitCode, await stdout, await stderr);
    }

    public static Task<(int Code, string Out, string Err)> RunAsync(params string[] args) => RunAsync(null, args);

    public static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "ckpt-engine")) && File.Exists(Path.Combine(d.FullName, "CheckpointEngine.slnx")))
            {
                return d.FullName;
            }
        }
        throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }
}
