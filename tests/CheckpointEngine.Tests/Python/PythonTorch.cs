using System.Diagnostics;
using System.Text;
using CheckpointEngine.Tests.Hosting;

namespace CheckpointEngine.Tests.Python;

/// <summary>
/// /usr/bin/python3 with torch for the Python worker extension's tests; on a fresh machine Debian's
/// python3-torch is installed first (see <see cref="DebianPackages"/>).
/// </summary>
public sealed class PythonTorch : IAsyncLifetime
{
    public const string Python = "/usr/bin/python3";

    private static readonly Lazy<Task<string>> Ready = new(EnsureAsync);

    /// <summary>torch.__version__ of the interpreter the tests use.</summary>
    public string TorchVersion { get; private set; } = "";

    /// <summary>The package's folder (python/ at the repository root).</summary>
    public static string PackageRoot => Path.Combine(CkptEngineScript.RepoRoot(), "python");

    public async ValueTask InitializeAsync() => TorchVersion = await Ready.Value;

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

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

    private static async Task<(bool Ok, string Output)> ImportTorchAsync()
    {
        if (!File.Exists(Python))
        {
            return (false, $"{Python} does not exist");
        }
        var (code, output) = await RunAsync(Python, ["-c", "import torch; print(torch.__version__)"], TimeSpan.FromMinutes(2));
        return (code == 0, output.Trim());
    }

    private static Task<string> EnsureAsync() =>
        DebianPackages.EnsureAsync(ImportTorchAsync, $"the Python worker tests need torch for {Python}", "python3-torch");
}
