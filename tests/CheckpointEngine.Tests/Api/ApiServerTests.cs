using System.Net;
using System.Net.Http.Headers;
using CheckpointEngine.Hosting;
using CheckpointEngine.Hosting.Api;

namespace CheckpointEngine.Tests.Api;

/// <summary>The API in-process over TCP and a Unix socket: registration round trips, socket safety, the token.</summary>
public sealed class ApiServerTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task RegisterListGatherDelete_RoundTrip(bool unixSocket)
    {
        await using var h = await ApiHarness.StartAsync(unixSocket);
        var (files, tensors) = h.WriteModel();
        var bytes = tensors.Sum(t => t.Bytes.LongLength);

        var (status, body) = await h.PostAsync("/v1/checkpoints/step-1/files", RegisterBody.Files(files));
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Equal(("step-1", tensors.Length, bytes, 2), (body.GetProperty("name").GetString(), body.GetProperty("tensors").GetInt32(),
            body.GetProperty("bytes").GetInt64(), body.GetProperty("files").GetInt32()));
        Assert.True(body.GetProperty("buffers").GetInt32() >= 1);
        Assert.True(body.GetProperty("buffer_bytes").GetInt64() >= bytes);

        (status, body) = await h.GetAsync("/v1/checkpoints");
        Assert.Equal(HttpStatusCode.OK, status);
        var listed = Assert.Single(body.GetProperty("checkpoints").EnumerateArray());
        Assert.Equal(("step-1", bytes, false), (listed.GetProperty("name").GetString(), listed.GetProperty("bytes").GetInt64(), listed.GetProperty("metas_gathered").GetBoolean()));

        (status, body) = await h.PostAsync("/v1/checkpoints/step-1/gather-metas");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Equal((1, tensors.Length, bytes), (body.GetProperty("ranks").GetInt32(), body.GetProperty("tensors").GetInt32(), body.GetProperty("bytes").GetInt64()));
        (_, body) = await h.GetAsync("/v1/checkpoints");
        Assert.True(body.GetProperty("checkpoints")[0].GetProperty("metas_gathered").GetBoolean());

        (status, body) = await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/step-1");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        (_, body) = await h.GetAsync("/v1/checkpoints");
        Assert.Empty(body.GetProperty("checkpoints").EnumerateArray());
        (status, _) = await h.SendAsync(HttpMethod.Delete, "/v1/checkpoints/step-1");
        Assert.Equal(HttpStatusCode.NotFound, status);

        // The name is free again, and the files are untouched.
        (status, body) = await h.PostAsync("/v1/checkpoints/step-1/files", RegisterBody.Files(files));
        Assert.True(status == HttpStatusCode.OK, body.ToString());
    }

    [Fact]
    public async Task Register_QuantizeFp8_RegistersF8WeightsAndTheirScales()
    {
        await using var h = await ApiHarness.StartAsync();
        var file = h.WriteFile("fp8.safetensors", TestTensor.Random("layer.proj.weight", DType.BF16, [129, 257]), TestTensor.Random("layer.norm.weight", DType.BF16, [257]));
        var (status, body) = await h.PostAsync("/v1/checkpoints/fp8/files", $"{{\"files\": [{System.Text.Json.JsonSerializer.Serialize(file)}], \"quantize\": \"fp8\"}}");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Equal(3, body.GetProperty("tensors").GetInt32());
        Assert.True(h.ParameterServer.Registry.TryGet("fp8", out var c));
        var metas = c.Buffers.SelectMany(b => b.Metas).ToDictionary(m => m.Name);
        Assert.Equal(DType.F8_E4M3, metas["layer.proj.weight"].DType);
        Assert.Equal(DType.F32, metas["layer.proj.weight_scale_inv"].DType);
        Assert.Equal([2L, 3L], metas["layer.proj.weight_scale_inv"].Shape);
        Assert.Equal(DType.BF16, metas["layer.norm.weight"].DType);
    }

    [Fact]
    public async Task Status_NamesRankWorldAndDevice()
    {
        await using var h = await ApiHarness.StartAsync();
        var (status, body) = await h.GetAsync("/v1/status");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal((0, 1, h.Device.Id), (body.GetProperty("rank").GetInt32(), body.GetProperty("world_size").GetInt32(), body.GetProperty("device_id").GetString()));
        Assert.Equal(System.Text.Json.JsonValueKind.Null, body.GetProperty("update").ValueKind);
        Assert.Equal(System.Text.Json.JsonValueKind.Null, body.GetProperty("busy").ValueKind);
        (status, body) = await h.GetAsync("/v1/healthz");
        Assert.Equal((HttpStatusCode.OK, "ok"), (status, body.GetProperty("status").GetString()));
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public async Task UnixSocket_IsOwnerOnly_AndRemovedOnStop()
    {
        var h = await ApiHarness.StartAsync(unixSocket: true);
        string path;
        await using (h)
        {
            path = h.Api.UnixSocket!;
            Assert.Equal("unix:" + path, h.Api.Address);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
            Assert.Empty(Directory.GetDirectories(h.Temp.Path)); // The staging directory is gone.
            Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/healthz")).Status);

            // A second server on the same live socket is refused; the first keeps its socket.
            var error = await Assert.ThrowsAsync<IOException>(() => ApiServer.StartAsync(h.ParameterServer, new ApiOptions { UnixSocket = path },
                cancellationToken: TestContext.Current.CancellationToken));
            Assert.Contains("another server is listening", error.Message, StringComparison.Ordinal);
            Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/healthz")).Status);
        }
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task UnixSocket_StaleSocketFile_IsReplaced_FileWithContents_IsNot()
    {
        await using var h = await ApiHarness.StartAsync();
        var stale = h.Temp.File("stale.sock");
        using (var dead = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            dead.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(stale)); // Bound, never listening: what a crashed server leaves.
        }
        await using (var api = await ApiServer.StartAsync(h.ParameterServer, new ApiOptions { UnixSocket = stale }, cancellationToken: TestContext.Current.CancellationToken))
        {
            using var client = EngineTrigger.UnixSocketClient(stale);
            client.BaseAddress = new Uri("http://localhost");
            Assert.Equal(HttpStatusCode.OK, (await h.SendAsync(HttpMethod.Get, "/v1/healthz", client: client)).Status);
        }

        var notes = h.Temp.WriteText("notes.txt", "keep me");
        var error = await Assert.ThrowsAsync<IOException>(() => ApiServer.StartAsync(h.ParameterServer, new ApiOptions { UnixSocket = notes },
            cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("not a socket", error.Message, StringComparison.Ordinal);
        Assert.Equal("keep me", File.ReadAllText(notes));
    }

    [Theory]
    [InlineData("0.0.0.0")]
    [InlineData("[::]")]
    public async Task Listen_NonLoopback_IsRefusedUnlessAllowed(string host)
    {
        await using var h = await ApiHarness.StartAsync();
        var error = await Assert.ThrowsAsync<CheckpointEngineException>(() => ApiServer.StartAsync(h.ParameterServer, new ApiOptions { Host = host },
            cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("is not a loopback address", error.Message, StringComparison.Ordinal);
        Assert.Contains("--allow-remote", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Token_IsRequiredOnEveryEndpoint()
    {
        await using var h = await ApiHarness.StartAsync(token: "s3cret-token");
        Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/healthz")).Status);
        Assert.Equal(0, PrometheusText.Value(await h.MetricsAsync(), "ckpt_engine_update_in_progress", ("rank", "0")));

        using var anonymous = new HttpClient { BaseAddress = h.Http.BaseAddress };
        using var wrong = new HttpClient { BaseAddress = h.Http.BaseAddress };
        wrong.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "s3cret-tokem");
        using var basic = new HttpClient { BaseAddress = h.Http.BaseAddress };
        basic.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", "s3cret-token");
        foreach (var client in new[] { anonymous, wrong, basic })
        {
            foreach (var (method, path) in new[] { (HttpMethod.Get, "/v1/healthz"), (HttpMethod.Get, "/metrics"), (HttpMethod.Get, "/v1/checkpoints"),
                (HttpMethod.Post, "/v1/checkpoints/x/gather-metas"), (HttpMethod.Post, "/v1/checkpoints/x/prepare"), (HttpMethod.Delete, "/v1/checkpoints/x"), (HttpMethod.Get, "/nowhere") })
            {
                var (status, body) = await h.SendAsync(method, path, client: client);
                Assert.Equal(HttpStatusCode.Unauthorized, status);
                Assert.Contains("Bearer", body.GetProperty("error").GetString(), StringComparison.Ordinal);
            }
        }
        Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/checkpoints")).Status);
    }
}
