using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using CheckpointEngine.Hosting;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Api;

/// <summary>The <c>serve</c> command: its flag checks in-process, and a real process that serves until SIGTERM.</summary>
public sealed class ServeCliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Theory]
    [InlineData("give --uds PATH or --listen HOST:PORT")]
    [InlineData("--uds", "/tmp/a.sock", "--listen", "127.0.0.1:0", "give either --uds or --listen, not both")]
    [InlineData("--uds", "/tmp/a.sock", "--allow-remote", "--allow-remote applies to --listen only")]
    [InlineData("--listen", "8000", "--listen: '8000' is not HOST:PORT")]
    [InlineData("--uds", "", "--uds: the socket path is empty")]
    [InlineData("--uds", "/tmp/a.sock", "--registration-budget", "lots", "--registration-budget: 'lots' is not a size like 64GiB")]
    public void Serve_BadFlags_AreRejectedWithTheReason(params string[] argsThenMessage)
    {
        var (code, _, stderr) = Run(["serve", .. argsThenMessage[..^1]]);
        Assert.NotEqual(0, code);
        Assert.Contains(argsThenMessage[^1], stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Serve_RemoteListenWithoutAllowRemote_ExitsOneBeforeJoining()
    {
        var (code, _, stderr) = Run("serve", "--listen", "192.0.2.1:8000");
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.StartsWith("error: '192.0.2.1' (192.0.2.1) is not a loopback address", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Serve_MissingAllowedDirectory_ExitsOneBeforeJoining()
    {
        var (code, _, stderr) = Run("serve", "--uds", "/tmp/never-made.sock", "--allow-dir", "/no/such/models");
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.StartsWith("error: allowed directory '/no/such/models' cannot be resolved: ", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Serve_ServesUntilSigterm_ThenStopsCleanly(bool unixSocket)
    {
        using var temp = new TempDirectory();
        var socket = temp.File("serve-0.sock");
        var psi = RankCluster.Start(["cli", "serve", .. unixSocket ? new[] { "--uds", temp.File("serve-{rank}.sock") } : ["--listen", "127.0.0.1:0"]]);
        foreach (var name in new[] { "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE" })
        {
            psi.Environment.Remove(name);
        }
        psi.Environment["CKPT_ENGINE_TOKEN"] = "cli-token";
        psi.Environment["CKPT_ENGINE_DEVICE_ID"] = $"serve-cli-{Guid.NewGuid():N}";
        using var process = Process.Start(psi)!;
        try
        {
            var ct = TestContext.Current.CancellationToken;
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(TimeSpan.FromSeconds(30));
            var line = await process.StandardOutput.ReadLineAsync(deadline.Token) ?? throw new InvalidOperationException("serve exited: " + await process.StandardError.ReadToEndAsync(ct));
            var address = line.StartsWith("serving rank 0 on ", StringComparison.Ordinal) ? line["serving rank 0 on ".Length..] : throw new InvalidOperationException(line);
            Assert.Equal(unixSocket ? "unix:" + socket : address, address);

            using var http = unixSocket ? EngineTrigger.UnixSocketClient(socket) : new HttpClient();
            http.BaseAddress = new Uri(unixSocket ? "http://localhost" : address);
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.GetAsync("/v1/healthz", ct)).StatusCode);
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "cli-token");
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/v1/healthz", ct)).StatusCode);

            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                await kill.WaitForExitAsync(deadline.Token);
            }
            await process.WaitForExitAsync(deadline.Token);
            Assert.Equal(0, process.ExitCode);
            Assert.Contains("stopped", await process.StandardOutput.ReadToEndAsync(ct), StringComparison.Ordinal);
            Assert.False(File.Exists(socket));
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync(CancellationToken.None);
            }
        }
    }
}
