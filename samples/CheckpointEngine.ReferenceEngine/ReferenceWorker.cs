using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Hosting;
using CheckpointEngine.Worker;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace CheckpointEngine.ReferenceEngine;

/// <summary>
/// A stand-in for a vLLM server with N tensor-parallel shards, one per device: it takes
/// <c>POST /collective_rpc</c> with <c>update_weights_from_ipc</c> and a device-id → socket map, and
/// every shard whose device is in the map receives the update from its parameter server. The weights
/// live in native memory; <c>GET /v1/weights/digest</c> shows what each shard holds, so tests and
/// demos can check an update bit for bit. Endpoints are in ReferenceWorker.Http.cs.
/// </summary>
public sealed partial class ReferenceWorker : IAsyncDisposable
{
    /// <summary>How long stopping waits for in-flight requests, and then for a running update, before giving up on them.</summary>
    private static readonly TimeSpan StopWait = TimeSpan.FromSeconds(3);

    private readonly WebApplication _app;
    private readonly WorkerShard[] _shards;
    private readonly ReferenceWorkerOptions _options;
    private readonly TextWriter? _log;

    /// <summary>One update (or digest) at a time touches the shards.</summary>
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly CancellationTokenSource _stopping = new();
    private int _failArmed;
    private int _updates;
    private int _disposed;

    private ReferenceWorker(WebApplication app, WorkerShard[] shards, ReferenceWorkerOptions options, TextWriter? log)
    {
        _app = app;
        _shards = shards;
        _options = options;
        _log = log;
    }

    /// <summary>Where it listens, e.g. http://127.0.0.1:41523/ (the real port when 0 was asked for).</summary>
    public Uri Address { get; private set; } = null!;

    /// <summary>The device id of each shard, in shard order.</summary>
    public IReadOnlyList<string> DeviceIds => [.. _shards.Select(s => s.DeviceId)];

    /// <summary>Starts listening; the worker serves until it is disposed. Does not handle process signals (the caller does).</summary>
    /// <exception cref="ArgumentException">Bad options: shard count, device ids, port, host.</exception>
    /// <exception cref="IOException">The address is in use or cannot be bound.</exception>
    public static async Task<ReferenceWorker> StartAsync(ReferenceWorkerOptions options, TextWriter? log = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var deviceIds = Validate(options);
        _ = Task.Run(WorkerFraming.Prime, CancellationToken.None); // As an engine would at start: its first update finds the protocol's contracts ready.
        var ip = ListenHosts.Resolve(options.Host);
        if (!options.AllowRemote && !IPAddress.IsLoopback(ip))
        {
            throw new ArgumentException(
                $"'{options.Host}' ({ip}) is not a loopback address: whoever reaches the worker can start updates and read its digests; pass --allow-remote to listen there", nameof(options));
        }
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k => k.Listen(ip, options.Port));
        builder.Services.AddRoutingCore();
        builder.Services.AddSingleton<IHostLifetime, NoSignalsLifetime>();
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = StopWait);
        var app = builder.Build();
        var shards = deviceIds.Select((id, i) => new WorkerShard(i, deviceIds.Count, id, options.ShardByTp)).ToArray();
        var worker = new ReferenceWorker(app, shards, options, log);
        worker.MapEndpoints();
        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await worker.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        var bound = app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
        worker.Address = new Uri(bound);
        return worker;
    }

    private static List<string> Validate(ReferenceWorkerOptions options)
    {
        if (options.TensorParallel < 1)
        {
            throw new CheckpointEngineException($"tensor parallelism must be at least 1, not {options.TensorParallel}");
        }
        if (options.Port is < 0 or > 65535)
        {
            throw new CheckpointEngineException($"port {options.Port} is outside [0, 65535]");
        }
        if (options.FailAtBucket < 0)
        {
            throw new CheckpointEngineException($"the bucket to fail at must not be negative, not {options.FailAtBucket}");
        }
        if (options.IdleTimeout <= TimeSpan.Zero)
        {
            throw new CheckpointEngineException($"the idle timeout must be positive, not {options.IdleTimeout}");
        }
        var ids = options.DeviceIds?.ToList() ?? [.. Enumerable.Range(0, options.TensorParallel).Select(Worker.DeviceIds.Host)];
        if (ids.Count != options.TensorParallel)
        {
            throw new CheckpointEngineException($"{ids.Count} device ids given for {options.TensorParallel} tensor-parallel shards");
        }
        if (ids.FirstOrDefault(string.IsNullOrWhiteSpace) is { } blank)
        {
            throw new CheckpointEngineException($"device id #{ids.IndexOf(blank)} is empty");
        }
        if (ids.GroupBy(id => id, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            throw new CheckpointEngineException($"device id '{twice.Key}' is given twice");
        }
        return ids;
    }

    private void Log(string line) => KestrelApps.Log(_log, line);

    /// <summary>
    /// Allocates every shard's weights for these tensors and touches them, before any update: an engine's model exists
    /// before its first update (vLLM's dummy load fills it), so that update measures the transfer, not the model's first touches.
    /// </summary>
    public void AllocateWeights(IEnumerable<(string Name, DType DType, long[] Shape)> tensors)
    {
        var list = tensors.ToList();
        foreach (var shard in _shards)
        {
            shard.Allocate(list);
        }
    }

    /// <summary>
    /// Stops: cancels a running update (its shards fail with "the worker is stopping"), lets requests
    /// finish within a short deadline, then frees the weights. Idempotent.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _stopping.CancelAsync().ConfigureAwait(false);
        await KestrelApps.StopAsync(_app, StopWait).ConfigureAwait(false);
        if (await _gate.WaitAsync(StopWait).ConfigureAwait(false))
        {
            foreach (var shard in _shards)
            {
                shard.Dispose();
            }
            _gate.Dispose();
        }
        else
        {
            // An update is stuck inside a shard: freeing its buffers under it would crash the process.
            Log("stopping: an update is still running; its weights are left to the process's exit");
        }
        _stopping.Dispose();
    }

    /// <summary>Leaves process signals to whoever hosts the worker (the CLI, a test).</summary>
    private sealed class NoSignalsLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
