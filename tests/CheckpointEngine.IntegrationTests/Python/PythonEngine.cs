using System.Diagnostics;
using System.Text.Json;

namespace CheckpointEngine.IntegrationTests.Python;

/// <summary>
/// The stand-in inference engine (python/tests/e2e_worker.py) as a process: it writes the source checkpoint,
/// then serves vLLM's HTTP surface; its stderr is kept for failure messages, and it is killed on dispose.
/// </summary>
public sealed class PythonEngine : IDisposable
{
    private readonly Process _process;
    private readonly List<string> _log = [];
    private int _disposed;

    private PythonEngine(Process process)
    {
        _process = process;
        _process.ErrorDataReceived += (_, e) => { lock (_log) { _log.Add(e.Data ?? ""); } };
        _process.BeginErrorReadLine();
    }

    /// <summary>The engine's base URL (http://127.0.0.1:PORT).</summary>
    public string Url { get; private set; } = "";

    /// <summary>
    /// Starts the engine with <paramref name="arguments"/> (after the script) and <paramref name="environment"/>,
    /// and waits until it listens (torch's import takes a while on a busy machine).
    /// </summary>
    public static Task<PythonEngine> StartAsync(IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        StartScriptAsync("e2e_worker.py", environment, arguments);

    /// <summary>Starts another script of python/tests that prints "listening on URL" when ready.</summary>
    public static Task<PythonEngine> StartScriptAsync(string script, IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        StartFileAsync(Path.Combine(PythonTorch.PackageRoot, "tests", script), environment, arguments);

    /// <summary>Starts the Python program <paramref name="file"/>, which prints "listening on URL" when ready.</summary>
    public static async Task<PythonEngine> StartFileAsync(string file, IReadOnlyDictionary<string, string> environment, params string[] arguments)
    {
        var psi = new ProcessStartInfo(PythonTorch.Python) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (string[])[file, .. arguments])
        {
            psi.ArgumentList.Add(a);
        }
        foreach (var (k, v) in environment)
        {
            psi.Environment[k] = v;
        }
        psi.Environment["PYTHONDONTWRITEBYTECODE"] = "1";
        var engine = new PythonEngine(Process.Start(psi)!);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        try
        {
            while (await engine._process.StandardOutput.ReadLineAsync(cts.Token) is { } line)
            {
                if (line.StartsWith("listening on ", StringComparison.Ordinal))
                {
                    engine.Url = line["listening on ".Length..].Trim();
                    return engine;
                }
            }
        }
        catch (OperationCanceledException)
        {
            engine.Dispose();
            throw new TimeoutException($"the Python engine did not start within 90 s:\n{engine.Log()}");
        }
        var code = engine._process.WaitForExit(5000) ? engine._process.ExitCode : -1;
        engine.Dispose();
        throw new InvalidOperationException($"the Python engine exited ({code}):\n{engine.Log()}");
    }

    /// <summary>The last lines the engine wrote to stderr.</summary>
    public string Log()
    {
        lock (_log)
        {
            return string.Join('\n', _log.TakeLast(60));
        }
    }

    /// <summary>SHA-256 of every state_dict() tensor, per device (GET /v1/weights/digest).</summary>
    public async Task<List<(string DeviceId, Dictionary<string, string> Tensors)>> DigestsAsync()
    {
        using var http = new HttpClient();
        using var doc = JsonDocument.Parse(await http.GetStringAsync(Url + "/v1/weights/digest", TestContext.Current.CancellationToken));
        return [.. doc.RootElement.GetProperty("shards").EnumerateArray()
            .Select(s => (s.GetProperty("device_id").GetString()!, s.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!)))];
    }

    /// <summary>The engine process's memory mappings of files whose path starts with <paramref name="prefix"/>.</summary>
    public List<string> Mappings(string prefix) =>
        [.. File.ReadAllLines($"/proc/{_process.Id}/maps").Where(l => l.Contains(prefix, StringComparison.Ordinal))];

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
        _process.Dispose();
    }
}
