using CheckpointEngine.Runtime;

namespace CheckpointEngine.Server;

/// <summary>
/// The composition root of a rank process: joins the world described by one <see cref="RankConfig"/>,
/// creates the device backend and the parameter server on it, and takes them down in reverse order.
/// Commands and hosts (CLI, HTTP API, benchmarks, tests) start ranks only through it.
/// </summary>
public sealed class RankHost : IAsyncDisposable
{
    private int _disposed;

    private RankHost(RankConfig config, World world, Backend backend, ParameterServer server)
    {
        Config = config;
        World = world;
        Backend = backend;
        Server = server;
    }

    /// <summary>What the rank was started with (the resolved store port included).</summary>
    public RankConfig Config { get; }

    public World World { get; }

    public Backend Backend { get; }

    public ParameterServer Server { get; }

    /// <summary>
    /// Starts a rank: every rank of the world calls this (joining and the GPU backend's set-up are collective).
    /// </summary>
    /// <param name="device">The --device option (host|cuda|auto), if any; otherwise <see cref="RankConfig.Device"/> decides.</param>
    /// <param name="timeout">Deadline of the backend's collective set-up (the world's is <see cref="RankConfig.ConnectTimeout"/>).</param>
    /// <exception cref="CheckpointEngineException">The world cannot be joined, the backend is unavailable, or this device's worker socket is taken.</exception>
    public static async Task<RankHost> StartAsync(RankConfig config, string? device = null, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        var kind = Backend.Choose(device, config.Device);
        var world = await World.JoinAsync(config, ct).ConfigureAwait(false);
        Backend? backend = null;
        try
        {
            backend = await Backend.CreateAsync(world, kind, timeout ?? config.ConnectTimeout, ct).ConfigureAwait(false);
            var server = new ParameterServer(world, backend.Device, group: backend.Group);
            server.Registry.Budget = world.Config.RegistrationBudget ?? Memory.CheckpointRegistry.DefaultBudget(world.Config.LocalWorldSize);
            return new RankHost(world.Config, world, backend, server);
        }
        catch
        {
            backend?.Dispose();
            await world.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await Server.DisposeAsync().ConfigureAwait(false);
        Backend.Dispose();
        await World.DisposeAsync().ConfigureAwait(false);
    }
}
