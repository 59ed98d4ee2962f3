using System.Diagnostics;
using System.Text;
using CheckpointEngine.Tests.Hosting;

namespace CheckpointEngine.Tests.Python;

/// <summary>
/// /usr/bin/python3 with torch for the Python worker extension's tests. On a fresh machine, when
/// running as root with apt-get, it installs Debian's python3-torch once: serialised by a lock file
/// across test classes and processes, bounded by a deadline. Anywhere else a missing torch fails
/// with what to install.
/// </summary>
public sealed class PythonTorch : IAsyncLifetime
{
    public const string Python = "/usr/bin/python3";

    private const string LockFile = "/tmp/ckpt-engine-python3-torch.lock";
    private static readonly TimeSpan InstallDeadline = TimeSpan.FromMinutes(20);
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

    private static async Task<string> EnsureAsync()
    {
        var (ok, output) = await ImportTorchAsync();
        if (ok)
        {
            return output;
        }
        if (!Environment.IsPrivilegedProcess || !File.Exists("/usr/bin/apt-get"))
        {
            throw new InvalidOperationException(
                $"the Python worker tests need torch for {Python} ({output}); install Debian's python3-torch " +
                "(apt-get install -y --no-install-recommends python3-torch) or run the tests as root to have them install it");
        }
        using var held = await LockAsync();
        (ok, output) = await ImportTorchAsync(); // Another process may have installed it meanwhile.
        if (ok)
        {
            return output;
        }
        var env = new Dictionary<string, string> { ["DEBIAN_FRONTEND"] = "noninteractive" };
        string[] install = ["-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", "python3-torch"];
        var (code, log) = await RunAsync("apt-get", install, InstallDeadline, environment: env);
        if (code != 0)
        {
            // A fresh machine may have no package lists yet.
            var (updated, updateLog) = await RunAsync("apt-get", ["-o", "DPkg::Lock::Timeout=600", "update"], TimeSpan.FromMinutes(10), environment: env);
            (code, log) = updated == 0 ? await RunAsync("apt-get", install, InstallDeadline, environment: env) : (updated, updateLog);
        }
        (ok, output) = await ImportTorchAsync();
        return ok ? output : throw new InvalidOperationException(
            $"installing python3-torch for {Python} failed (apt-get exited {code}; import says: {output}):\n{Tail(log, 3000)}");
    }

    /// <summary>Holds the install lock (an exclusive lock on a file, released if the holder dies).</summary>
    private static async Task<FileStream> LockAsync()
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return new FileStream(LockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (clock.Elapsed < InstallDeadline)
            {
                await Task.Delay(500);
            }
        }
    }

    private static string Tail(string text, int chars) => text.Length <= chars ? text : "..." + text[^chars..];
}
