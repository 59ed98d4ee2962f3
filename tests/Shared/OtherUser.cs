using System.Diagnostics;
using System.Threading.Channels;

namespace CheckpointEngine.Tests.Support;

/// <summary>
/// A Python program running as another local user (<c>nobody</c>, through util-linux's <c>setpriv</c>),
/// for tests that reproduce what a hostile user on the same host could do. Needs root to switch user;
/// elsewhere the test is skipped, saying why. Every read has a deadline; disposal kills the program.
/// </summary>
public sealed class OtherUser : IAsyncDisposable
{
    private const string Python = "/usr/bin/python3";
    private readonly Process _process;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();

    private OtherUser(Process process)
    {
        _process = process;
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                _lines.Writer.TryComplete();
            }
            else
            {
                _lines.Writer.TryWrite(e.Data);
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null) // Null: the stream ended, which says nothing.
            {
                _lines.Writer.TryWrite("stderr: " + e.Data);
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    /// <summary>The uid the program runs as.</summary>
    public const uint Uid = 65534;

    /// <summary>Starts <paramref name="code"/> as <c>nobody</c> with <paramref name="args"/> in <c>sys.argv[1:]</c>.</summary>
    public static OtherUser StartPython(string code, params string[] args)
    {
        if (global::CheckpointEngine.Worker.PeerCredentials.CurrentUser != 0)
        {
            Assert.Skip("running a program as another user needs root");
        }
        if (!File.Exists("/usr/bin/setpriv") || !File.Exists(Python))
        {
            Assert.Skip("needs /usr/bin/setpriv (util-linux) and /usr/bin/python3");
        }
        var psi = new ProcessStartInfo("/usr/bin/setpriv") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = "/" };
        foreach (var a in (string[])["--reuid=nobody", "--regid=nogroup", "--clear-groups", Python, "-u", "-c", code, .. args])
        {
            psi.ArgumentList.Add(a);
        }
        return new OtherUser(Process.Start(psi)!);
    }

    /// <summary>The program's next line of output; fails the test if none comes within <paramref name="deadline"/>.</summary>
    public async Task<string> ReadLineAsync(TimeSpan deadline)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(deadline);
        try
        {
            return await _lines.Reader.ReadAsync(cts.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or ChannelClosedException)
        {
            throw new Xunit.Sdk.XunitException($"the program running as nobody printed nothing more within {deadline.TotalSeconds} s (exited: {_process.HasExited})");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }
        await _process.WaitForExitAsync();
        _process.Dispose();
    }
}
