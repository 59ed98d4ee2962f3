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

    [Fact]
    public async Task Serve_OffLoopbackWithoutToken_RefusesToJoin_AndJoinsWithAllowNoToken()
    {
        var address = TestPorts.NonLoopbackAddress();
        Assert.SkipWhen(address is null, "this machine has no non-loopback IPv4 address");
        var ct = TestContext.Current.CancellationToken;
        ProcessStartInfo Serve(params string[] extra)
        {
            var psi = RankCluster.Start(["cli", "serve", "--listen", "127.0.0.1:0", .. extra]);
            foreach (var name in new[] { "RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CKPT_ENGINE_TOKEN", "CKPT_ENGINE_ALLOW_NO_TOKEN" })
            {
                psi.Environment.Remove(name);
            }
            psi.Environment["MASTER_ADDR"] = address!.ToString();
            psi.Environment["CKPT_ENGINE_DEVICE_ID"] = $"serve-cli-{Guid.NewGuid():N}";
            return psi;
        }

        using (var refused = Process.Start(Serve())!)
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(TimeSpan.FromSeconds(30));
            var stderr = await refused.StandardError.ReadToEndAsync(deadline.Token);
            await refused.WaitForExitAsync(deadline.Token);
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Contains($"MASTER_ADDR={address} is not a loopback address and CKPT_ENGINE_TOKEN is not set", stderr, StringComparison.Ordinal);
            Assert.Contains("--allow-no-token or CKPT_ENGINE_ALLOW_NO_TOKEN=1", stderr, StringComparison.Ordinal);
        }

        using var allowed = Process.Start(Serve("--allow-no-token"))!;
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(TimeSpan.FromSeconds(30));
            var line = await allowed.StandardOutput.ReadLineAsync(deadline.Token);
            Assert.StartsWith("serving rank 0 on ", line, StringComparison.Ordinal);
        }
        finally
        {
            allowed.Kill(entireProcessTree: true);
            await allowed.WaitForExitAsync(CancellationToken.None);
        }
    }

    /// <summary>The flags reach the API: a file outside --allow-dir is 403, one over --registration-budget is 413, a remote update_url is 400 unless allowed by the variable.</summary>
    [Fact]
    public async Task Serve_AllowDirBudgetAndEngineHosts_AreEnforced()
    {
        using var temp = new TempDirectory();
        var allowed = temp.SubDirectory("models");
        var inside = Path.Combine(allowed, "w.safetensors");
        Checkpoints.SafeTensorsWriter.Write(inside, [Checkpoints.TensorToWrite.FromBytes("w", DType.U8, [4096], new byte[4096])]);
        var outside = temp.Write("outside.safetensors", File.ReadAllBytes(inside));
        var psi = RankCluster.Start(["cli", "serve", "--listen", "127.0.0.1:0", "--allow-dir", allowed, "--registration-budget", "1KiB"]);
        foreach (var name in new[] { "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CKPT_ENGINE_TOKEN" })
        {
            psi.Environment.Remove(name);
        }
        psi.Environment["CKPT_ENGINE_DEVICE_ID"] = $"serve-cli-{Guid.NewGuid():N}";
        psi.Environment["CKPT_ENGINE_ALLOW_ENGINE_HOSTS"] = "engine.example";
        using var process = Process.Start(psi)!;
        try
        {
            var ct = TestContext.Current.CancellationToken;
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(TimeSpan.FromSeconds(60));
            var line = await process.StandardOutput.ReadLineAsync(deadline.Token) ?? throw new InvalidOperationException("serve exited: " + await process.StandardError.ReadToEndAsync(ct));
            var address = line.StartsWith("serving rank 0 on ", StringComparison.Ordinal) ? line["serving rank 0 on ".Length..] : throw new InvalidOperationException(line);
            using var http = new HttpClient { BaseAddress = new Uri(address) };
            async Task<(HttpStatusCode, string)> Post(string path, string body)
            {
                using var response = await http.PostAsync(path, new StringContent(body, System.Text.Encoding.UTF8, "application/json"), deadline.Token);
                return (response.StatusCode, await response.Content.ReadAsStringAsync(deadline.Token));
            }

            var (status, text) = await Post("/v1/checkpoints/m/files", RegisterBody.Files(outside));
            Assert.True(status == HttpStatusCode.Forbidden, text);
            (status, text) = await Post("/v1/checkpoints/m/files", RegisterBody.Files(inside));
            Assert.True(status == HttpStatusCode.RequestEntityTooLarge, text);
            Assert.Contains("needs 4096 bytes of host memory", text, StringComparison.Ordinal);
            (status, text) = await Post("/v1/checkpoints/m/update", "{\"update_url\": \"http://10.9.8.7:8000\"}");
            Assert.True(status == HttpStatusCode.BadRequest, text);
            (status, text) = await Post("/v1/checkpoints/m/update", "{\"update_url\": \"http://engine.example:8000\"}");
            Assert.True(status == HttpStatusCode.NotFound, text); // Allowed; the checkpoint is not registered.
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
