using System.Diagnostics;
using System.Text;

namespace CheckpointEngine.IntegrationTests.Python;

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

    private static async Task<(bool Ok, string Output)> ImportTorchAsync()
    {
        if (!File.Exists(Python))
        {
            return (false, $"{Python} does not exist");
        }
        var (code, output) = await TestProcess.RunAsync(Python, ["-c", "import torch; print(torch.__version__)"], TimeSpan.FromMinutes(2));
        return (code == 0, output.Trim());
    }

    private static Task<string> EnsureAsync() =>
        DebianPackages.EnsureAsync(ImportTorchAsync, $"the Python worker tests need torch for {Python}", "python3-torch");
}
