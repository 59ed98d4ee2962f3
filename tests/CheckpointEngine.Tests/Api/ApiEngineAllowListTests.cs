using System.Net;
using CheckpointEngine.Hosting;
using CheckpointEngine.Interop;

namespace CheckpointEngine.Tests.Api;

/// <summary>
/// An update posts this rank's worker sockets to the engine a client names: only loopback hosts and this
/// user's own sockets unless allow-listed. A refused target is a 400 naming the flag to set; an accepted one
/// goes on to the next check (here a 404: the checkpoint is not registered, so nothing is sent anywhere).
/// </summary>
public sealed class ApiEngineAllowListTests
{
    private const string Update = "/v1/checkpoints/unknown/update";

    private static string Error(System.Text.Json.JsonElement body) => body.GetProperty("error").GetString()!;

    private static string UrlBody(string url, string? uds = null) =>
        System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object?> { ["update_url"] = url, ["uds"] = uds });

    [Theory]
    [InlineData("http://10.1.2.3:8000", "10.1.2.3")]
    [InlineData("https://engine.example.com/", "engine.example.com")]
    [InlineData("http://127.0.0.1@evil.example:8000/", "evil.example")]
    [InlineData("http://0.0.0.0:8000", "0.0.0.0")]
    [InlineData("http://[fe80::1]:8000", "[fe80::1]")]
    [InlineData("http://localhost.evil.example:8000", "localhost.evil.example")]
    public async Task UpdateUrl_NotLoopback_IsRefusedNamingTheFlag(string url, string host)
    {
        await using var h = await ApiHarness.StartAsync();
        var (status, body) = await h.PostAsync(Update, UrlBody(url));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.StartsWith($"\"update_url\": {host} is not a loopback address", Error(body), StringComparison.Ordinal);
        Assert.Contains($"--allow-engine-host {host} (or CKPT_ENGINE_ALLOW_ENGINE_HOSTS)", Error(body), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("http://127.0.0.1:8000")]
    [InlineData("http://127.9.8.7:8000/collective_rpc")]
    [InlineData("http://localhost:8000")]
    [InlineData("http://LOCALHOST.:8000")]
    [InlineData("http://[::1]:8000")]
    [InlineData("http://[::ffff:127.0.0.1]:8000")]
    public async Task UpdateUrl_Loopback_IsAccepted(string url)
    {
        await using var h = await ApiHarness.StartAsync();
        var (status, body) = await h.PostAsync(Update, UrlBody(url));
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Contains("checkpoint 'unknown' is neither registered", Error(body), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("engine.example.com", "http://Engine.Example.com:8000", true)]
    [InlineData("10.1.2.3", "http://10.1.2.3:8000", true)]
    [InlineData("10.1.2.3", "http://10.1.2.4:8000", false)]
    [InlineData("*", "http://anything.example:1", true)]
    public async Task UpdateUrl_AllowListedHost_IsAccepted(string allowed, string url, bool accepted)
    {
        await using var h = await ApiHarness.StartAsync(configure: (o, _) => o with { AllowedEngineHosts = [allowed] });
        var (status, _) = await h.PostAsync(Update, UrlBody(url));
        Assert.Equal(accepted ? HttpStatusCode.NotFound : HttpStatusCode.BadRequest, status);
    }

    [Fact]
    public async Task Uds_NotASocket_IsRefused()
    {
        await using var h = await ApiHarness.StartAsync();
        var file = h.Temp.WriteText("engine.sock", "not a socket");
        var (status, body) = await h.PostAsync(Update, UrlBody("http://engine", file));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.StartsWith($"\"uds\": '{file}' is not a Unix socket (a regular file)", Error(body), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Uds_OwnSocket_IsAccepted_WhateverTheUrlHost()
    {
        await using var h = await ApiHarness.StartAsync();
        var path = h.Temp.File("engine.sock");
        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        listener.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
        var (status, _) = await h.PostAsync(Update, UrlBody("http://engine.example:8000", path));
        Assert.Equal(HttpStatusCode.NotFound, status);
    }

    /// <summary>A socket bound by a process running as nobody (see <see cref="OtherUser"/>; skipped where that cannot be done).</summary>
    private static async Task<(OtherUser Process, string Path)> OtherUserSocketAsync(TempDirectory temp, bool keepListening)
    {
        var dir = temp.SubDirectory("nobody");
        if (OperatingSystem.IsLinux())
        {
            File.SetUnixFileMode(dir, (UnixFileMode)0x1FF); // 0777: nobody creates its socket here.
            File.SetUnixFileMode(temp.Path, File.GetUnixFileMode(temp.Path) | UnixFileMode.OtherExecute);
        }
        var path = Path.Combine(dir, "engine.sock");
        var nobody = OtherUser.StartPython("""
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
            print("ready", flush=True)
            if sys.argv[2] == "1":
                time.sleep(120)
            """, path, keepListening ? "1" : "0");
        Assert.Equal("ready", await nobody.ReadLineAsync(TimeSpan.FromSeconds(30)));
        return (nobody, path);
    }

    [Fact]
    public async Task Uds_OwnedByAnotherUser_IsRefused_UnlessAllowListed()
    {
        using var temp = new TempDirectory();
        var socket = await OtherUserSocketAsync(temp, keepListening: false);
        await using var nobody = socket.Process;
        await using (var h = await ApiHarness.StartAsync())
        {
            var (status, body) = await h.PostAsync(Update, UrlBody("http://localhost", socket.Path));
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal(
                $"\"uds\": '{socket.Path}' is owned by uid 65534, not by this server's user (uid 0); to use it anyway, start serve with --allow-engine-socket {socket.Path} (or CKPT_ENGINE_ALLOW_ENGINE_SOCKETS)",
                Error(body));
        }
        await using (var h = await ApiHarness.StartAsync(configure: (o, _) => o with { AllowedEngineSockets = [socket.Path] }))
        {
            var (status, _) = await h.PostAsync(Update, UrlBody("http://localhost", socket.Path));
            Assert.Equal(HttpStatusCode.NotFound, status);
        }
    }

    [Fact]
    public async Task Trigger_EngineOfAnotherUser_BehindASocketWeOwn_IsRefusedOnConnect()
    {
        // The path passes the owner check (chowned to us after binding); the process listening on it does not (SO_PEERCRED).
        using var temp = new TempDirectory();
        var socket = await OtherUserSocketAsync(temp, keepListening: true);
        await using var nobody = socket.Process;
        var (code, output) = await TestProcess.RunAsync("chown", ["0:0", socket.Path], TimeSpan.FromSeconds(30));
        Assert.True(code == 0, output);
        using var client = EngineTrigger.UnixSocketClient(socket.Path, peerUid: 0);
        client.Timeout = TimeSpan.FromSeconds(30);
        var e = await Assert.ThrowsAsync<HttpRequestException>(() => client.GetAsync("http://localhost/", TestContext.Current.CancellationToken));
        Assert.Contains($"the engine on {socket.Path} runs as uid 65534, not as this server's user (uid 0)", e.Message, StringComparison.Ordinal);
    }
}
