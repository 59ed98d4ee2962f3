using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using CheckpointEngine.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace CheckpointEngine.Hosting.Api;

/// <summary>
/// The HTTP API of one parameter-server rank, compatible with the original checkpoint-engine's
/// (<c>/v1/checkpoints/{name}/files|gather-metas|update</c>, <c>/v1/healthz</c>) plus listings, status
/// and the server's <see cref="UpdateTelemetry"/> exported with OpenTelemetry (Prometheus at <c>/metrics</c>; OTLP when configured). Endpoints are in ApiServer.Http.cs, request parsing in ApiServer.Requests.cs.
/// It serves a <see cref="ParameterServer"/> it does not own: the caller disposes that after this.
/// </summary>
public sealed partial class ApiServer : IAsyncDisposable
{
    /// <summary>How long stopping waits for requests, and then for a running update or gather, to end.</summary>
    private static readonly TimeSpan StopWait = TimeSpan.FromSeconds(5);

    private readonly WebApplication _app;
    private readonly ILogger _log;
    private readonly byte[]? _tokenHash;
    private readonly Checkpoints.AllowedDirectories? _allowedDirectories;
    private readonly EngineAllowList _engines;
    private readonly CancellationTokenSource _stopping = new();
    private bool _ownsSocketFile;
    private int _disposed;

    private ApiServer(WebApplication app, ParameterServer ps, ApiOptions options, Checkpoints.AllowedDirectories? allowed, ILogger? log)
    {
        _allowedDirectories = allowed;
        _engines = new EngineAllowList(options.AllowedEngineHosts, options.AllowedEngineSockets);
        _app = app;
        ParameterServer = ps;
        _log = log ?? NullLogger.Instance;
        _tokenHash = options.Token is { Length: > 0 } token ? SHA256.HashData(Encoding.UTF8.GetBytes(token)) : null;
        UnixSocket = options.UnixSocket is null ? null : Path.GetFullPath(options.UnixSocket);
    }

    public ParameterServer ParameterServer { get; }

    /// <summary>Where it serves: <c>http://127.0.0.1:8000</c> (the real port when 0 was asked for) or <c>unix:/path/to.sock</c>.</summary>
    public string Address { get; private set; } = "";

    /// <summary>The Unix socket it serves on, or null on TCP.</summary>
    public string? UnixSocket { get; }

    /// <summary>Starts serving; it serves until disposed. Does not handle process signals (the caller does).</summary>
    /// <exception cref="CheckpointEngineException">Bad options: a non-loopback address without <see cref="ApiOptions.AllowRemote"/>, a bad port or host, an allowed directory that does not exist.</exception>
    /// <exception cref="IOException">The address or socket path is in use or cannot be bound.</exception>
    /// <param name="log">Where registrations, updates and failed requests are logged (none by default).</param>
    public static async Task<ApiServer> StartAsync(ParameterServer ps, ApiOptions options, ILogger? log = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(ps);
        ArgumentNullException.ThrowIfNull(options);
        var allowed = options.AllowedDirectories.Count == 0 ? null : new Checkpoints.AllowedDirectories(options.AllowedDirectories);
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        if (options.UnixSocket is { } uds)
        {
            if (uds.Length == 0)
            {
                throw new CheckpointEngineException("the Unix socket path is empty");
            }
            var path = Path.GetFullPath(uds);
            builder.WebHost.UseKestrelCore().ConfigureKestrel(k => k.ListenUnixSocket(path));
            builder.WebHost.UseSockets(s => s.CreateBoundListenSocket = endpoint =>
                endpoint is UnixDomainSocketEndPoint ? PrivateUnixSocket.Bind(path) : SocketTransportOptions.CreateDefaultBoundListenSocket(endpoint));
        }
        else
        {
            if (options.Port is < 0 or > 65535)
            {
                throw new CheckpointEngineException($"port {options.Port} is outside [0, 65535]");
            }
            var ip = ResolveListenHost(options.Host, options.AllowRemote);
            builder.WebHost.UseKestrelCore().ConfigureKestrel(k => k.Listen(ip, options.Port));
        }
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBodySize;
        });
        builder.Services.AddRoutingCore();
        builder.Services.AddSingleton<IHostLifetime, NoSignalsLifetime>();
        AddTelemetry(builder.Services, ps, options.OtlpEndpoint);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = StopWait);
        var app = builder.Build();
        var server = new ApiServer(app, ps, options, allowed, log);
        server.MapEndpoints();
        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
            server._ownsSocketFile = server.UnixSocket is not null;
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        server.Address = server.UnixSocket is { } socket
            ? "unix:" + socket
            : new Uri(app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First()).GetLeftPart(UriPartial.Authority);
        return server;
    }

    /// <summary>
    /// The address to listen on for <paramref name="host"/> (an IP, "[v6]", "localhost" or a name). Only
    /// loopback unless <paramref name="allowRemote"/>: the API reads files and drives updates.
    /// </summary>
    /// <exception cref="CheckpointEngineException">The host does not resolve, or is not loopback and remote access was not allowed.</exception>
    public static IPAddress ResolveListenHost(string host, bool allowRemote)
    {
        ArgumentNullException.ThrowIfNull(host);
        var ip = ListenHosts.Resolve(host);
        if (!allowRemote && !IPAddress.IsLoopback(ip))
        {
            throw new CheckpointEngineException(
                $"'{host}' ({ip}) is not a loopback address: the API can read any file this process can; pass --allow-remote (and set {Runtime.RankConfig.TokenVariable}) to serve other hosts");
        }
        return ip;
    }

    /// <summary>
    /// This server's meter only (other parameter servers in the process have their own), for the Prometheus scrape and, when
    /// <paramref name="otlp"/> is set, OTLP with the update activities.
    /// </summary>
    private static void AddTelemetry(IServiceCollection services, ParameterServer ps, Uri? otlp)
    {
        var telemetry = services.AddOpenTelemetry().WithMetrics(m =>
        {
            m.AddMeter(UpdateTelemetry.Name)
                .AddView(i => ReferenceEquals(i.Meter, ps.Telemetry.Meter) ? null : MetricStreamConfiguration.Drop)
                .AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0); // A scrape right after an update sees it.
            if (otlp is not null)
            {
                m.AddOtlpExporter(o => o.Endpoint = otlp);
            }
        });
        if (otlp is not null)
        {
            telemetry.WithTracing(t => t.AddSource(UpdateTelemetry.Name).AddOtlpExporter(o => o.Endpoint = otlp));
        }
    }

    /// <summary>
    /// Stops: cancels a running update or gather (it fails on this rank, and so on every rank), lets
    /// requests finish within a short deadline, removes the socket file. Idempotent.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _stopping.CancelAsync().ConfigureAwait(false);
        await KestrelApps.StopAsync(_app, StopWait).ConfigureAwait(false);
        if (ParameterServer.RunningOperation is { } running)
        {
            _log.LogWarning("stopping: {Operation} still runs; the parameter server waits for it when it is disposed", running);
        }
        if (_ownsSocketFile)
        {
            PrivateUnixSocket.Remove(UnixSocket!);
        }
        _stopping.Dispose();
    }

    /// <summary>Leaves process signals to whoever hosts the server (the CLI, a test).</summary>
    private sealed class NoSignalsLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
