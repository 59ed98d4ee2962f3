using System.Net;
using System.Text;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Hosting.Api;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;
using CheckpointEngine.Tests.Checkpoints;
using CheckpointEngine.Tests.Worker;

namespace CheckpointEngine.Tests.Api;

/// <summary>
/// A single-rank world (rank 0 of 1 on loopback), its parameter server on a host device with a unique
/// id, and the API in-process on loopback port 0 or on a Unix socket in a temp directory.
/// </summary>
internal sealed class ApiHarness : IAsyncDisposable
{
    private ApiHarness(TempDirectory temp, World world, HostDevice device, ParameterServer ps, ApiServer api, HttpClient http)
    {
        Temp = temp;
        World = world;
        Device = device;
        ParameterServer = ps;
        Api = api;
        Http = http;
    }

    public TempDirectory Temp { get; }

    public World World { get; }

    public HostDevice Device { get; }

    public ParameterServer ParameterServer { get; }

    public ApiServer Api { get; }

    public HttpClient Http { get; }

    /// <param name="configure">Changes the options (allow-lists), given the harness's temp directory.</param>
    public static async Task<ApiHarness> StartAsync(bool unixSocket = false, string? token = null, Func<ApiOptions, TempDirectory, ApiOptions>? configure = null)
    {
        var ct = TestContext.Current.CancellationToken;
        var temp = new TempDirectory();
        var world = await World.JoinAsync(new RankConfig(), ct);
        var device = new HostDevice($"api-test-{Guid.NewGuid():N}", freeMemory: 64 << 20);
        var ps = new ParameterServer(world, device);
        var options = unixSocket ? new ApiOptions { UnixSocket = temp.File("api.sock"), Token = token } : new ApiOptions { Token = token };
        options = configure?.Invoke(options, temp) ?? options;
        var api = await ApiServer.StartAsync(ps, options, cancellationToken: ct);
        var http = unixSocket ? EngineTrigger.UnixSocketClient(api.UnixSocket!) : new HttpClient();
        http.BaseAddress = new Uri(unixSocket ? "http://localhost" : api.Address);
        http.Timeout = TimeSpan.FromSeconds(30);
        if (token is not null)
        {
            http.DefaultRequestHeaders.Authorization = new("Bearer", token);
        }
        return new ApiHarness(temp, world, device, ps, api, http);
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Api.DisposeAsync();
        await ParameterServer.DisposeAsync();
        Device.Dispose();
        await World.DisposeAsync();
        Temp.Dispose();
    }

    public Task<(HttpStatusCode Status, JsonElement Body)> GetAsync(string path) => SendAsync(HttpMethod.Get, path);

    public Task<(HttpStatusCode Status, JsonElement Body)> PostAsync(string path, string? body = null) => SendAsync(HttpMethod.Post, path, body);

    public async Task<(HttpStatusCode Status, JsonElement Body)> SendAsync(HttpMethod method, string path, string? body = null, HttpClient? client = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        }
        using var response = await (client ?? Http).SendAsync(request, TestContext.Current.CancellationToken);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return (response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    public async Task<string> MetricsAsync() => await Http.GetStringAsync("/metrics", TestContext.Current.CancellationToken);

    /// <summary>Writes tensors as a safetensors file in the temp directory; returns its path.</summary>
    public string WriteFile(string name, params TestTensor[] tensors)
    {
        var path = Temp.File(name);
        SafeTensorsWriter.Write(path, tensors.Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, t.Bytes)));
        return path;
    }

    /// <summary>A small model in two files: mixed dtypes, a scalar, an empty tensor.</summary>
    public (string[] Files, TestTensor[] Tensors) WriteModel(int seed = 1)
    {
        TestTensor[] a =
        [
            TestTensor.Random("model.embed_tokens.weight", DType.BF16, [64, 32], seed),
            TestTensor.Random("model.norm.weight", DType.F32, [32], seed),
            TestTensor.Random("model.step", DType.I64, [], seed),
        ];
        TestTensor[] b =
        [
            TestTensor.Random("model.layers.0.self_attn.q_proj.weight", DType.BF16, [32, 32], seed),
            TestTensor.Random("model.layers.0.mlp.down_proj.weight", DType.F8_E4M3, [32, 48], seed),
            TestTensor.Random("model.layers.0.mlp.down_proj.weight_scale", DType.F32, [], seed),
            TestTensor.Random("model.layers.0.empty", DType.F16, [0, 8], seed),
        ];
        return ([WriteFile($"model-{seed}-a.safetensors", a), WriteFile($"model-{seed}-b.safetensors", b)], [.. a, .. b]);
    }
}
