using System.Net;
using System.Text;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.ReferenceEngine;
using CheckpointEngine.Tests.Worker;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Hosting;

/// <summary>The reference worker in-process on loopback, driven through /collective_rpc by fake parameter servers.</summary>
public sealed class WorkerHttpTests : IAsyncDisposable
{
    private readonly List<FakeParameterServer> _servers = [];
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(10) };
    private ReferenceWorker? _worker;

    public async ValueTask DisposeAsync()
    {
        if (_worker is not null)
        {
            await _worker.DisposeAsync();
        }
        _http.Dispose();
        _servers.ForEach(s => s.Dispose());
    }

    private async Task<ReferenceWorker> StartAsync(int tp = 1, bool shardByTp = false, int? failAtBucket = null, TimeSpan? idle = null)
    {
        var run = Guid.NewGuid().ToString("N")[..12];
        _worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions
        {
            TensorParallel = tp,
            DeviceIds = [.. Enumerable.Range(0, tp).Select(i => $"test-{run}-{i}")],
            ShardByTp = shardByTp,
            FailAtBucket = failAtBucket,
            IdleTimeout = idle ?? FakeParameterServer.StepDeadline,
        }, cancellationToken: TestContext.Current.CancellationToken);
        _http.BaseAddress = _worker.Address;
        return _worker;
    }

    /// <summary>One fake parameter server per shard of the worker.</summary>
    private List<FakeParameterServer> Servers()
    {
        var servers = _worker!.DeviceIds.Select(id => FakeParameterServer.Start(deviceId: id)).ToList();
        _servers.AddRange(servers);
        return servers;
    }

    private Task<HttpResponseMessage> PostAsync(string body) =>
        _http.PostAsync("/collective_rpc", new StringContent(body, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);

    private Task<HttpResponseMessage> UpdateAsync(IEnumerable<FakeParameterServer> servers, double? timeout = null) => PostAsync(JsonSerializer.Serialize(new
    {
        method = ReferenceWorker.UpdateMethod,
        args = new object[] { servers.ToDictionary(s => s.DeviceId, s => s.Ticket.ToString()) },
        kwargs = new { },
        timeout,
    }));

    private static async Task<(HttpStatusCode Status, JsonElement Body)> ResultAsync(Task<HttpResponseMessage> request)
    {
        using var response = await request.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return (response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>Device id → (tensor name → sha256 hex), from the worker.</summary>
    private async Task<Dictionary<string, Dictionary<string, string>>> DigestAsync()
    {
        var (status, body) = await ResultAsync(_http.GetAsync("/v1/weights/digest", TestContext.Current.CancellationToken));
        Assert.Equal(HttpStatusCode.OK, status);
        return body.GetProperty("shards").EnumerateArray().ToDictionary(
            s => s.GetProperty("device_id").GetString()!,
            s => s.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!));
    }

    private static TestTensor[] Model(int seed) =>
    [
        TestTensor.Random("model.embed_tokens.weight", DType.BF16, [32, 16], seed),
        TestTensor.Random("model.layers.0.self_attn.q_proj.weight", DType.BF16, [16, 16], seed),
        TestTensor.Random("model.layers.0.self_attn.o_proj.weight", DType.BF16, [16, 16], seed),
        TestTensor.Random("model.layers.0.mlp.down_proj.weight", DType.F8_E4M3, [16, 32], seed),
        TestTensor.Random("model.layers.0.mlp.down_proj.weight_scale", DType.F32, [], seed),
        TestTensor.Random("model.norm.weight", DType.F32, [16], seed),
    ];

    [Fact]
    public async Task Start_OnANonLoopbackAddress_IsRefusedUnlessAllowed()
    {
        var address = TestPorts.NonLoopbackAddress();
        Assert.SkipWhen(address is null, "this machine has no non-loopback IPv4 address");
        var options = new ReferenceWorkerOptions { Host = address!.ToString(), DeviceIds = [$"remote-test-{Guid.NewGuid():N}"] };

        var e = await Assert.ThrowsAsync<ArgumentException>(() => ReferenceWorker.StartAsync(options, cancellationToken: TestContext.Current.CancellationToken));
        Assert.StartsWith($"'{address}' ({address}) is not a loopback address: whoever reaches the worker can start updates and read its digests; pass --allow-remote", e.Message, StringComparison.Ordinal);

        await using var allowed = await ReferenceWorker.StartAsync(options with { AllowRemote = true }, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(address.ToString(), allowed.Address.Host);
    }

    [Fact]
    public async Task Update_TwoShards_EachHoldsEveryTensorBitForBit()
    {
        await StartAsync(tp: 2);
        var servers = Servers();
        foreach (var model in new[] { Model(1), [.. Model(2)[..5], TestTensor.Random("model.norm.weight", DType.F32, [24], 2)] })
        {
            var request = UpdateAsync(servers);
            await Task.WhenAll(servers.Select(s => s.UpdateAsync(s.Place(model[..3]), s.Place(model[3..]))));
            var (status, body) = await ResultAsync(request);
            Assert.True(status == HttpStatusCode.OK, body.ToString());
            var results = body.GetProperty("results").EnumerateArray().ToList();
            Assert.Equal(_worker!.DeviceIds, results.Select(r => r.GetProperty("device_id").GetString()));
            Assert.All(results, r => Assert.Equal((2, model.Length, model.Sum(t => t.Bytes.LongLength)),
                (r.GetProperty("buckets").GetInt32(), r.GetProperty("tensors").GetInt32(), r.GetProperty("bytes").GetInt64())));

            // Round 2 rewrites every tensor in place and regrows the one whose size changed.
            var digest = await DigestAsync();
            var expected = model.ToDictionary(t => t.Name, t => t.Sha256);
            Assert.All(_worker.DeviceIds, id => Assert.Equal(expected, digest[id]));
        }
    }

    /// <summary>Shard <paramref name="rank"/> of <paramref name="n"/>'s part of a 2-D tensor, computed element by element.</summary>
    private static byte[] Slice(TestTensor t, int rank, int n, bool rows)
    {
        var size = t.DType.BitSize() / 8;
        long r = t.Shape[0], c = t.Shape[1];
        var keep = new List<byte>();
        for (long i = 0; i < r; i++)
        {
            for (long j = 0; j < c; j++)
            {
                if (rows ? i / (r / n) == rank : j / (c / n) == rank)
                {
                    keep.AddRange(t.Bytes.AsSpan((int)((i * c + j) * size), size));
                }
            }
        }
        return [.. keep];
    }

    [Fact]
    public async Task Update_ShardByTp_KeepsRowSlicesOfColumnParallelAndColumnSlicesOfRowParallel()
    {
        await StartAsync(tp: 2, shardByTp: true);
        var rows = new[]
        {
            TestTensor.Random("model.layers.0.self_attn.q_proj.weight", DType.F32, [4, 6]),
            TestTensor.Random("model.layers.0.self_attn.k_proj.weight", DType.BF16, [6, 4]),
            TestTensor.Random("model.layers.0.self_attn.v_proj.weight", DType.BF16, [2, 3]),
            TestTensor.Random("model.layers.1.mlp.gate_proj.weight", DType.F8_E4M3, [8, 5]),
            TestTensor.Random("up_proj.weight", DType.I64, [2, 2]),
        };
        var columns = new[]
        {
            TestTensor.Random("model.layers.0.self_attn.o_proj.weight", DType.F32, [3, 8]),
            TestTensor.Random("model.layers.1.mlp.down_proj.weight", DType.BF16, [5, 4]),
        };
        var whole = new[]
        {
            TestTensor.Random("model.layers.2.self_attn.o_proj.weight", DType.F32, [4, 3]), // columns not divisible by 2
            TestTensor.Random("model.layers.2.self_attn.q_proj.weight", DType.F32, [3, 4]), // rows not divisible by 2
            TestTensor.Random("model.layers.2.self_attn.q_proj.bias", DType.F32, [4]),
            TestTensor.Random("model.layers.2.mlp.up_proj.weight", DType.F4, [4, 4]), // sub-byte elements
            TestTensor.Random("model.layers.2.mlp.xup_proj.weight", DType.F32, [4, 4]), // not the same name
            TestTensor.Random("model.layers.2.mlp.gate_proj.weight", DType.F32, [2, 2, 2]), // not 2-D
            TestTensor.Random("model.embed_tokens.weight", DType.BF16, [4, 4]),
        };
        var servers = Servers();
        var request = UpdateAsync(servers);
        await Task.WhenAll(servers.Select(s => s.UpdateAsync(s.Place(rows), s.Place(columns), s.Place(whole))));
        var (status, body) = await ResultAsync(request);
        Assert.True(status == HttpStatusCode.OK, body.ToString());

        var digest = await DigestAsync();
        for (var rank = 0; rank < 2; rank++)
        {
            var expected = rows.ToDictionary(t => t.Name, t => TensorHash.Sha256Hex(Slice(t, rank, 2, rows: true)));
            foreach (var t in columns)
            {
                expected[t.Name] = TensorHash.Sha256Hex(Slice(t, rank, 2, rows: false));
            }
            foreach (var t in whole)
            {
                expected[t.Name] = t.Sha256;
            }
            Assert.Equal(expected, digest[_worker!.DeviceIds[rank]]);
        }

        // Having seen the layout, each shard declares the slices it keeps with the next update (the rest whole).
        Assert.All(servers, s => Assert.Null(s.DeclaredWants));
        request = UpdateAsync(servers);
        await Task.WhenAll(servers.Select(s => s.UpdateAsync(s.Place(rows), s.Place(columns), s.Place(whole))));
        (status, body) = await ResultAsync(request);
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        var layout = rows.Concat(columns).Concat(whole).ToDictionary(t => t.Name, t => (t.DType, (IReadOnlyList<long>)t.Shape));
        for (var rank = 0; rank < 2; rank++)
        {
            var wants = servers[rank].DeclaredWants!;
            Assert.Equal(TensorWant.Along(0, new SliceRange(rank * 2, 2)), wants.For("model.layers.0.self_attn.q_proj.weight"));
            Assert.Equal(TensorWant.Along(0, new SliceRange(rank * 4, 4)), wants.For("model.layers.1.mlp.gate_proj.weight"));
            Assert.Equal(TensorWant.Along(1, new SliceRange(rank * 4, 4)), wants.For("model.layers.0.self_attn.o_proj.weight"));
            Assert.Equal(TensorWant.Along(1, new SliceRange(rank * 2, 2)), wants.For("model.layers.1.mlp.down_proj.weight"));
            Assert.All(whole, t => Assert.Equal(TensorWant.Whole, wants.For(t.Name)));
            Assert.Empty(wants.Problems(layout));
        }
    }

    [Fact]
    public async Task Update_FailAtBucket_FailsTheFirstUpdateThereAndTheNextSucceeds()
    {
        await StartAsync(failAtBucket: 1);
        var ps = Servers().Single();
        var deviceId = _worker!.DeviceIds[0];
        var model = Model(3);

        var request = UpdateAsync([ps]);
        await ps.AcceptAsync();
        FakeParameterServer.AssertOk(await ps.SendAsync(ps.Attach));
        FakeParameterServer.AssertOk(await ps.SendAsync(new LoadMessage(0, ps.Place(model[..3]))));
        var reply = await ps.SendAsync(new LoadMessage(1, ps.Place(model[3..])));
        Assert.Equal(new WorkerReply(false, $"injected failure at bucket 1 on {deviceId}"), reply);
        FakeParameterServer.AssertOk(await ps.SendAsync(new AbortMessage("rank 0: worker failed")));
        var (status, body) = await ResultAsync(request);
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Equal($"shard 0 ({deviceId}): injected failure at bucket 1 on {deviceId}", body.GetProperty("error").GetString());

        request = UpdateAsync([ps]);
        await ps.UpdateAsync(ps.Place(model[..3]), ps.Place(model[3..]));
        (status, body) = await ResultAsync(request);
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Equal(model.ToDictionary(t => t.Name, t => t.Sha256), (await DigestAsync())[deviceId]);
    }

    public static TheoryData<string, string> BadBodies() => new()
    {
        { "", "request body is not valid JSON: The input does not contain any JSON tokens" },
        { "{\"method\": ", "request body is not valid JSON: " },
        { "{'method': 1}", "request body is not valid JSON: ''' is an invalid start of a property name (line 1, byte 2)" },
        { "[1, 2]", "request body must be a JSON object like {\"method\": \"update_weights_from_ipc\", \"args\": [{device_id: ticket}]}, not a list" },
        { "{}", "\"method\" must be a string" },
        { "{\"method\": 7}", "\"method\" must be a string" },
        { "{\"method\": \"reset_prefix_cache\", \"args\": []}", "unknown method 'reset_prefix_cache': this worker supports only update_weights_from_ipc" },
        { "{\"method\": \"update_weights_from_ipc\"}", "\"args\" must be a list whose first item maps device ids to worker tickets" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": []}", "\"args\" must be a list whose first item" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [[\"@x\"]]}", "\"args\" must be a list whose first item" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"gpu-0\": 5}]}", "args[0]: the ticket of device 'gpu-0' must be a non-empty string, not a number" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"gpu-0\": \"\"}]}", "args[0]: the ticket of device 'gpu-0' must be a non-empty string, not a string" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"gpu-0\": \"@x\"}]}", "args[0]: device 'gpu-0': '@x' is a bare socket address, not a worker ticket" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"a\": \"@x#0000000000000000000000000000000000000000000000000000000000000000\", \"a\": \"@y#0000000000000000000000000000000000000000000000000000000000000000\"}]}", "args[0]: device 'a' appears twice" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"a\": \"@x#0000000000000000000000000000000000000000000000000000000000000000\"}], \"kwargs\": []}", "\"kwargs\" must be an object, not a list" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"a\": \"@x#0000000000000000000000000000000000000000000000000000000000000000\"}], \"timeout\": -1}", "\"timeout\" must be a positive number of seconds, not -1" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"a\": \"@x#0000000000000000000000000000000000000000000000000000000000000000\"}], \"timeout\": \"soon\"}", "\"timeout\" must be a positive number of seconds, not \"soon\"" },
        { "{\"method\": \"update_weights_from_ipc\", \"args\": [{\"gpu-0\": \"@x#0000000000000000000000000000000000000000000000000000000000000000\"}]}", "none of this worker's devices (" },
    };

    [Theory]
    [MemberData(nameof(BadBodies))]
    public async Task CollectiveRpc_BadBody_Returns400SayingWhy(string body, string expected)
    {
        await StartAsync();
        var (status, json) = await ResultAsync(PostAsync(body));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.StartsWith(expected, json.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Health_Returns200()
    {
        await StartAsync();
        var (status, _) = await ResultAsync(_http.GetAsync("/health", TestContext.Current.CancellationToken));
        Assert.Equal(HttpStatusCode.OK, status);
    }

    [Fact]
    public async Task Digest_BeforeAnyUpdate_ListsEveryShardEmpty()
    {
        await StartAsync(tp: 3);
        var digest = await DigestAsync();
        Assert.Equal(_worker!.DeviceIds, digest.Keys);
        Assert.All(digest.Values, Assert.Empty);
    }

    [Fact]
    public async Task Update_ParameterServerNeverListens_FailsAtTheRequestTimeout()
    {
        // The worker would wait 10 minutes for a parameter server: only the request's timeout can end it within the step deadline.
        await StartAsync(idle: TimeSpan.FromMinutes(10));
        using var silent = FakeParameterServer.Start(deviceId: _worker!.DeviceIds[0], listen: false);
        var (status, body) = await ResultAsync(UpdateAsync([silent], timeout: 0.3));
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Equal($"shard 0 ({silent.DeviceId}): the update did not end within the request's timeout of 0.3 s", body.GetProperty("error").GetString());
    }

    [Fact]
    public async Task Update_WhileAnotherRuns_Returns409AndTheFirstFailsWhenItsServerLeaves()
    {
        await StartAsync();
        var ps = Servers().Single();
        var first = UpdateAsync([ps]);
        await ps.AcceptAsync();
        var (status, body) = await ResultAsync(UpdateAsync([ps]));
        Assert.Equal(HttpStatusCode.Conflict, status);
        Assert.Equal("an update is already running on this worker", body.GetProperty("error").GetString());

        ps.CloseConnection();
        (status, body) = await ResultAsync(first);
        Assert.Equal(HttpStatusCode.InternalServerError, status);
        Assert.Equal($"shard 0 ({ps.DeviceId}): the parameter server at {ps.Address} closed the connection before attach", body.GetProperty("error").GetString());
    }

    [Fact]
    public async Task Dispose_DuringAnUpdate_StopsPromptly()
    {
        // The update would wait 10 minutes for the next message: stopping within the step deadline is stopping promptly.
        var worker = await StartAsync(idle: TimeSpan.FromMinutes(10));
        var ps = Servers().Single();
        var request = UpdateAsync([ps]);
        await ps.AcceptAsync();
        FakeParameterServer.AssertOk(await ps.SendAsync(ps.Attach));
        await worker.DisposeAsync().AsTask().WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        try
        {
            var (status, body) = await ResultAsync(request);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            Assert.Contains("the worker is stopping", body.GetProperty("error").GetString(), StringComparison.Ordinal);
        }
        catch (HttpRequestException)
        {
            // The server may also have cut the connection: either way the request ended.
        }
    }
}
