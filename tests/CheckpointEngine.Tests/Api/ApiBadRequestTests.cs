using System.Net;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Tests.Checkpoints;
using CheckpointEngine.Tests.Worker;

namespace CheckpointEngine.Tests.Api;

/// <summary>One server with checkpoint "known" registered and a directory of bad files, shared by the bad-request cases.</summary>
public sealed class ApiBadRequestFixture : IAsyncLifetime
{
    internal ApiHarness Harness { get; private set; } = null!;

    public string Dir => Harness.Temp.Path;

    public async ValueTask InitializeAsync()
    {
        Harness = await ApiHarness.StartAsync();
        var good = Harness.WriteFile("good.safetensors", TestTensor.Random("w", DType.F32, [4, 4]));
        Harness.Temp.WriteText("notes.txt", "not a safetensors file, just words");
        Harness.Temp.Write("truncated.safetensors", RawSafeTensors.Build("{" + RawSafeTensors.Entry("w", "F32", "4", 0, 16) + "}", dataBytes: 8));
        Harness.Temp.SubDirectory("folder");
        var (status, body) = await Harness.PostAsync("/v1/checkpoints/known/files", RegisterBody.Files(good));
        Assert.True(status == HttpStatusCode.OK, body.ToString());
    }

    public async ValueTask DisposeAsync() => await Harness.DisposeAsync();
}

/// <summary>Every bad request gets a 4xx JSON error naming the problem, and the server keeps serving.</summary>
public sealed class ApiBadRequestTests(ApiBadRequestFixture fixture) : IClassFixture<ApiBadRequestFixture>
{
    private const string Files = "/v1/checkpoints/new/files";
    private const string Update = "/v1/checkpoints/known/update";

    public static TheoryData<string, string, string?, int, string> Cases() => new()
    {
        // Registration bodies.
        { "POST", Files, "{\"files\": [", 400, "the request body is not valid JSON" },
        { "POST", Files, "", 400, "the request body is empty: expected {\"files\"" },
        { "POST", Files, "[\"a.safetensors\"]", 400, "must be a JSON object" },
        { "POST", Files, "{}", 400, "\"files\" is missing" },
        { "POST", Files, "{\"files\": \"{dir}/good.safetensors\"}", 400, "\"files\" must be a list of paths, not a string" },
        { "POST", Files, "{\"files\": []}", 400, "\"files\" is empty" },
        { "POST", Files, "{\"files\": [7]}", 400, "files[0] must be a non-empty path, not a number" },
        { "POST", Files, "{\"file\": [\"{dir}/good.safetensors\"]}", 400, "unknown field \"file\"" },
        { "POST", Files, "{\"files\": [\"{dir}/good.safetensors\"], \"quantize\": \"int4\"}", 400, "\"quantize\" must be \"fp8\" or null, not \"int4\"" },
        { "POST", Files, "{\"files\": [\"{dir}/good.safetensors\"], \"quantize\": true}", 400, "\"quantize\" must be \"fp8\" or null, not true" },
        // Files: missing, not files, not safetensors, malformed, twice.
        { "POST", Files, "{\"files\": [\"{dir}/good.safetensors\", \"{dir}/missing.safetensors\"]}", 400, "files[1]: '{dir}/missing.safetensors' does not exist" },
        { "POST", Files, "{\"files\": [\"{dir}/folder\"]}", 400, "files[0]: '{dir}/folder' is a directory; list its .safetensors files" },
        { "POST", Files, "{\"files\": [\"{dir}/notes.txt\"]}", 400, "{dir}/notes.txt: " },
        { "POST", Files, "{\"files\": [\"{dir}/truncated.safetensors\"]}", 400, "{dir}/truncated.safetensors: " },
        { "POST", Files, "{\"files\": [\"{dir}/good.safetensors\", \"{dir}/./good.safetensors\"]}", 400, "files[1]: {dir}/./good.safetensors is listed twice" },
        // Names.
        { "POST", "/v1/checkpoints/known/files", "{\"files\": [\"{dir}/good.safetensors\"]}", 409, "checkpoint 'known' is already registered on rank 0" },
        { "DELETE", "/v1/checkpoints/unknown", null, 404, "checkpoint 'unknown' is not registered on rank 0 (registered: known)" },
        { "POST", "/v1/checkpoints/unknown/update", "{}", 404, "checkpoint 'unknown' is neither registered on rank 0" },
        { "POST", "/v1/checkpoints/unknown/gather-metas", null, 404, "no rank of the world holds checkpoint 'unknown'" },
        { "POST", "/v1/checkpoints/unknown/prepare", "{}", 404, "checkpoint 'unknown' is neither registered on rank 0" },
        // Update bodies.
        { "POST", Update, "{\"ranks\": [1]}", 400, "ranks[0]: 1 is not a rank of this world (ranks 0..0)" },
        { "POST", Update, "{\"ranks\": [-1]}", 400, "ranks[0]: -1 is not a rank of this world" },
        { "POST", Update, "{\"ranks\": [0, 0]}", 400, "ranks[1]: rank 0 is listed twice" },
        { "POST", Update, "{\"ranks\": [0.5]}", 400, "ranks[0] must be a whole number, not 0.5" },
        { "POST", Update, "{\"ranks\": \"0\"}", 400, "\"ranks\" must be a list of ranks, not a string" },
        { "POST", Update, "{\"inference_group_ranks\": [3]}", 400, "inference_group_ranks[0]: 3 is not a rank of this world" },
        { "POST", Update, "{\"timeout\": 0}", 400, "\"timeout\" must be a positive number of seconds" },
        { "POST", Update, "{\"verify\": \"yes\"}", 400, "\"verify\" must be true or false, not \"yes\"" },
        { "POST", Update, "{\"verify\": 1}", 400, "\"verify\" must be true or false, not 1" },
        { "POST", Update, "{\"class_relays\": \"auto\"}", 400, "\"class_relays\" must be true, false or null (auto), not \"auto\"" },
        { "POST", Update, "{\"buckets_in_flight\": 9}", 400, "\"buckets_in_flight\" must be a whole number from 1 to 8, not 9" },
        { "POST", "/v1/checkpoints/known/prepare", "{\"ranks\": [1]}", 400, "ranks[0]: 1 is not a rank of this world (ranks 0..0)" }, // The update's body, checked alike.
        { "POST", Update, "{\"buckets_in_flight\": 1.5}", 400, "\"buckets_in_flight\" must be a whole number from 1 to 8, not 1.5" },
        { "POST", Update, "{\"p2p_transport\": \"rdma\"}", 400, "\"p2p_transport\" must be \"tcp\", \"ucx\", \"auto\" or null, not \"rdma\"" },
        { "POST", Update, "{\"engine\": \"auto\"}", 400, "\"engine\" must be \"vllm\" (/collective_rpc) or \"sglang\" (/update_weights_from_ipc), not \"auto\"" },
        { "POST", Update, "{\"engine\": \"SGLang\"}", 400, "\"engine\" must be \"vllm\" (/collective_rpc) or \"sglang\" (/update_weights_from_ipc), not \"SGLang\"" },
        { "POST", Update, "{\"engine\": 2}", 400, "\"engine\" must be \"vllm\" (/collective_rpc) or \"sglang\" (/update_weights_from_ipc), not 2" },
        { "GET", "/v1/checkpoints/unknown", null, 404, "checkpoint 'unknown' is not registered on rank 0" },
        { "POST", Update, "{\"timeout\": \"300\"}", 400, "\"timeout\" must be a positive number of seconds (at most 604800), not \"300\"" },
        { "POST", Update, "{\"update_url\": \"ftp://engine\"}", 400, "\"update_url\" must be the inference engine's http(s) URL" },
        { "POST", Update, "{\"update_url\": 8000}", 400, "\"update_url\" must be the inference engine's http(s) URL" },
        { "POST", Update, "{\"uds\": 1}", 400, "\"uds\" must be the path of the engine's Unix socket or null" },
        { "POST", Update, "{\"rank\": [0]}", 400, "unknown field \"rank\"" },
        { "POST", Update, "{\"ranks\": [", 400, "the request body is not valid JSON" },
        { "POST", "/v1/checkpoints/known/gather-metas", "{\"timeout\": -1}", 400, "\"timeout\" must be a positive number of seconds" },
        // Routes.
        { "GET", "/v1/nowhere", null, 404, "no such endpoint: GET /v1/nowhere" },
        { "PUT", "/v1/healthz", null, 405, "PUT is not allowed on /v1/healthz" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task BadRequest_Returns4xxNamingTheProblem_AndServerKeepsServing(string method, string path, string? body, int expectedStatus, string expected)
    {
        var h = fixture.Harness;
        var (status, json) = await h.SendAsync(new HttpMethod(method), path, body?.Replace("{dir}", fixture.Dir, StringComparison.Ordinal));
        Assert.True((int)status == expectedStatus, $"{(int)status}: {json}");
        Assert.Contains(expected.Replace("{dir}", fixture.Dir, StringComparison.Ordinal), json.GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/healthz")).Status);
        var (_, list) = await h.GetAsync("/v1/checkpoints");
        Assert.Equal(["known"], list.GetProperty("checkpoints").EnumerateArray().Select(c => c.GetProperty("name").GetString()));
    }

    [Fact]
    public async Task BodyTooLarge_Returns413()
    {
        var h = fixture.Harness;
        var body = "{\"files\": [\"" + new string('a', 2 << 20) + "\"]}";
        // Expect: 100-continue, so the client waits for the refusal instead of racing it with the body (a broken pipe).
        using var request = new HttpRequestMessage(HttpMethod.Post, Files) { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };
        request.Headers.ExpectContinue = true;
        using var response = await h.Http.SendAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.Contains("\"error\":\"the request body is too large\"", await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.OK, (await h.GetAsync("/v1/healthz")).Status);
    }

    [Fact]
    public async Task MalformedFile_ErrorIsTheFormatMessage()
    {
        var h = fixture.Harness;
        var expected = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(Path.Combine(fixture.Dir, "truncated.safetensors"))).Message;
        var (status, json) = await h.SendAsync(HttpMethod.Post, Files, RegisterBody.Files(Path.Combine(fixture.Dir, "truncated.safetensors")));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(expected, json.GetProperty("error").GetString());
    }
}
