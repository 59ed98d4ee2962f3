using System.Diagnostics;

namespace CheckpointEngine.Tests.Support;

/// <summary>
/// Runs the ckpt-engine CLI as a process: the build the test project references (no build inside a
/// test), or with <see cref="RunRepositoryScriptAsync"/> the <c>./ckpt-engine</c> script users run.
/// </summary>
internal static class CkptEngineScript
{
    /// <summary>The CLI built with the tests (a project reference copies it beside them).</summary>
    public static string BuiltCli => Path.Combine(AppContext.BaseDirectory, "ckpt-engine.dll");

    public static Task<(int Code, string Out, string Err)> RunAsync(Func<Process, Task>? whileRunning, params string[] args) =>
        RunAsync(null, whileRunning, args);

    public static Task<(int Code, string Out, string Err)> RunAsync(IDictionary<string, string>? environment, Func<Process, Task>? whileRunning, params string[] args) =>
        RunAsync("dotnet", [BuiltCli, .. args], environment, whileRunning, TimeSpan.FromMinutes(3));

    /// <summary>Through <c>./ckpt-engine</c> at the repository root, which builds the CLI when a source is newer.</summary>
    public static Task<(int Code, string Out, string Err)> RunRepositoryScriptAsync(params string[] args) =>
        RunAsync(Path.Combine(RepoRoot(), "ckpt-engine"), args, null, null, TimeSpan.FromMinutes(5));

    private static async Task<(int Code, string Out, string Err)> RunAsync(string program, string[] args, IDictionary<string, string>? environment,
        Func<Process, Task>? whileRunning, TimeSpan deadline)
    {
        var psi = new ProcessStartInfo(program)
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
        using var cts = new CancellationTokenSource(deadline);
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
