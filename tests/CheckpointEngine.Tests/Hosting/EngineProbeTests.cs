using CheckpointEngine.Hosting;
using CheckpointEngine.ReferenceEngine;
using CheckpointEngine.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;

namespace CheckpointEngine.Tests.Hosting;

/// <summary>Waiting for the engine and telling vLLM's surface from SGLang's, against real HTTP servers on loopback.</summary>
public sealed class EngineProbeTests
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    /// <summary>A Kestrel server on a free loopback port with the routes <paramref name="map"/> adds.</summary>
    private static async Task<(WebApplication App, string Url)> StartAsync(Action<WebApplication> map)
    {
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k => k.Listen(System.Net.IPAddress.Loopback, 0));
        builder.Services.AddRoutingCore();
        var app = builder.Build();
        map(app);
        await app.StartAsync(TestContext.Current.CancellationToken);
        return (app, app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First());
    }

    /// <summary>Shaped like SGLang started with --wait-for-initial-weights: its update route (POST only) and /ping answer, /health does not yet.</summary>
    private static void SglangBeforeItsFirstWeights(WebApplication app)
    {
        app.MapPost("/update_weights_from_ipc", () => Results.Ok());
        app.MapGet("/ping", () => Results.Ok());
        app.MapGet("/health", () => Results.StatusCode(503));
    }

    [Fact]
    public async Task Auto_SglangShapedEngine_IsSglang_AndNamedSglangItIsReadyByPing()
    {
        var (app, url) = await StartAsync(SglangBeforeItsFirstWeights);
        await using var _ = app;
        using var http = new HttpClient();

        Assert.Equal(EngineApi.Sglang, await EngineProbe.WaitAsync(http, url, null, Deadline, TestContext.Current.CancellationToken));
        Assert.Equal(EngineApi.Sglang, await EngineProbe.WaitAsync(http, url + "/", EngineApi.Sglang, Deadline, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task Auto_ReferenceWorker_IsVllm()
    {
        await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions { DeviceIds = [$"probe-{Guid.NewGuid():N}"] },
            cancellationToken: TestContext.Current.CancellationToken);
        using var http = new HttpClient();

        Assert.Equal(EngineApi.Vllm, await EngineProbe.WaitAsync(http, worker.Address.ToString(), null, Deadline, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task NothingRecognisable_FailsAtTheDeadline_NamingWhatAnswered()
    {
        var (app, url) = await StartAsync(a => a.MapGet("/health", () => Results.StatusCode(503)));
        await using var _ = app;
        using var http = new HttpClient();

        var auto = await Assert.ThrowsAsync<UpdateFailedException>(() => EngineProbe.WaitAsync(http, url, null, TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken));
        Assert.Contains($"the inference engine at {url} did not answer as vLLM (/health 200) or SGLang (/update_weights_from_ipc 405 to a GET); name it with --engine vllm|sglang", auto.Message, StringComparison.Ordinal);
        Assert.Contains("(last: GET /update_weights_from_ipc: HTTP 404, /health: HTTP 503)", auto.Message, StringComparison.Ordinal);

        var named = await Assert.ThrowsAsync<UpdateFailedException>(() => EngineProbe.WaitAsync(http, url, EngineApi.Vllm, TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken));
        Assert.Contains($"the inference engine at {url} did not become healthy (/health) within 1 s (last: /health: HTTP 503)", named.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Waiting for the engine through the trigger's client leaves its connection in the trigger's pool: the first update's
    /// post goes over the connection the probe opened, not a new one (so it does not open one inside the timed update).
    /// </summary>
    [Fact]
    public async Task Probe_ThroughTheTriggersClient_TheFirstPostReusesItsConnection()
    {
        var connections = new System.Collections.Concurrent.ConcurrentQueue<(string Path, string Connection)>();
        var (app, url) = await StartAsync(a =>
        {
            a.Use(async (http, next) =>
            {
                connections.Enqueue((http.Request.Path, http.Connection.Id));
                await next(http);
            });
            a.MapGet("/health", () => Results.Ok());
            a.MapPost("/collective_rpc", () => Results.Ok());
        });
        await using var _ = app;

        Assert.Equal(EngineApi.Vllm, await EngineProbe.WaitAsync(url, null, null, EngineApi.Vllm, Deadline, TestContext.Current.CancellationToken));
        var socket = new WorkerSocket(0, "probe-0", CheckpointEngine.Worker.WorkerTicket.New("@probe-test"));
        await EngineTrigger.Http(url, 1)(new UpdateContext("probe", 0, [socket]), TestContext.Current.CancellationToken);

        Assert.Equal(["/health", "/collective_rpc"], connections.Select(c => c.Path));
        Assert.Single(connections.Select(c => c.Connection).Distinct());
    }
}
