using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Rendezvous;
using CheckpointEngine.Runtime.Security;

namespace CheckpointEngine.Runtime;

/// <summary>
/// This process's membership in a set of ranks: rank 0 hosts the rendezvous store, every rank
/// connects to it, watches it for dead peers, and listens for data links from peers on other hosts.
/// <see cref="Group"/> is the group of all ranks; sub-groups are made from it.
/// </summary>
public sealed class World : IAsyncDisposable
{
    private static readonly TimeSpan WatchPoll = TimeSpan.FromSeconds(5);

    private readonly StoreServer? _server;
    private readonly StoreClient _client;
    private readonly StoreClient _watcher;
    private readonly Socket _dataListener;
    private readonly CancellationTokenSource _broken = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<(string LinkId, int From), TaskCompletionSource<Socket>> _inbound = new();
    private readonly ConcurrentDictionary<string, int> _generations = new(StringComparer.Ordinal);
    private ProcessGroup? _group;
    private string? _brokenReason;

    private World(RankConfig config, StoreServer? server, StoreClient client, StoreClient watcher, Socket dataListener)
    {
        Config = config;
        _server = server;
        _client = client;
        _watcher = watcher;
        _dataListener = dataListener;
        DataLinks = new Handshake(config.Token, Handshake.DataLink);
        HostId = config.HostId ?? DefaultHostId();
        DataEndpoint = (IPEndPoint)dataListener.LocalEndPoint!;
        _ = WatchAsync();
        _ = AcceptDataLinksAsync();
    }

    public RankConfig Config { get; }

    public int Rank => Config.Rank;

    public int Size => Config.WorldSize;

    /// <summary>The rendezvous store (shared by all groups; use <see cref="IStore.WithPrefix"/>).</summary>
    public IStore Store => _client;

    /// <summary>Where this rank's store listens (rank 0 only; its port is resolved when 0 was configured).</summary>
    public IPEndPoint? StoreEndpoint => _server?.Endpoint;

    /// <summary>The store this rank hosts (rank 0), or null.</summary>
    internal StoreServer? StoreServer => _server;

    /// <summary>The group of every rank.</summary>
    public ICommunicator Group => _group!;

    /// <summary>Ranks on the same host share this id (and so use shared memory between them).</summary>
    public string HostId { get; }

    internal IPEndPoint DataEndpoint { get; }

    /// <summary>How data links authenticate, both ways (its deadline and limit are settable for tests).</summary>
    internal Handshake DataLinks { get; }

    /// <summary>The address peers reach this rank on (data links, P2P reads).</summary>
    public IPAddress AdvertiseAddress => DataEndpoint.Address;

    /// <summary>Cancelled when a rank died or the store was lost; every wait in every group watches it.</summary>
    public CancellationToken Broken => _broken.Token;

    public string? BrokenReason => _brokenReason;

    public static async Task<World> JoinAsync(RankConfig config, CancellationToken ct = default)
    {
        StoreServer? server = null;
        StoreClient? client = null;
        StoreClient? watcher = null;
        Socket? listener = null;
        try
        {
            var port = config.MasterPort;
            var master = await ResolveAsync(config.MasterAddr, ct).ConfigureAwait(false);
            RequireTokenOffLoopback(config, master);
            if (config.Rank == 0)
            {
                server = StoreServer.Start(master, config.MasterPort, config.Token, config.WorldSize);
                port = server.Endpoint.Port;
            }
            client = await StoreClient.ConnectAsync(config.MasterAddr, port, config.Token, config.Rank, config.ConnectTimeout, ct).ConfigureAwait(false);
            watcher = await StoreClient.ConnectAsync(config.MasterAddr, port, config.Token, -1, config.ConnectTimeout, ct).ConfigureAwait(false);
            listener = ListenForData(await AdvertiseAddressAsync(config, port, ct).ConfigureAwait(false));
            var world = new World(config with { MasterPort = port }, server, client, watcher, listener);
            try
            {
                world._group = await ProcessGroup.CreateAsync(world, "world", Enumerable.Range(0, config.WorldSize).ToArray(), config.ConnectTimeout, ct).ConfigureAwait(false);
            }
            catch
            {
                await world.DisposeAsync().ConfigureAwait(false);
                throw;
            }
            return world;
        }
        catch when (client is null || watcher is null || listener is null)
        {
            client?.Dispose();
            watcher?.Dispose();
            listener?.Dispose();
            server?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A world whose listeners other hosts can reach (a store or advertise address off loopback) needs a
    /// token, or an explicit <see cref="RankConfig.AllowNoToken"/>: otherwise anyone on the network
    /// could join, read registered weights or break the world.
    /// </summary>
    private static void RequireTokenOffLoopback(RankConfig config, IPAddress master)
    {
        var exposed = !IPAddress.IsLoopback(master) ? $"MASTER_ADDR={config.MasterAddr}"
            : config.AdvertiseAddress is { } a && !IPAddress.IsLoopback(a) ? $"{RankConfig.AdvertiseAddressVariable}={a}"
            : null;
        if (exposed is not null && config.Token is null && !config.AllowNoToken)
        {
            throw new RendezvousException(
                $"{exposed} is not a loopback address and {RankConfig.TokenVariable} is not set: anyone who reaches this host could join the world " +
                $"and read its weights. Set {RankConfig.TokenVariable} to the same secret on every rank (e.g. export {RankConfig.TokenVariable}=$(openssl rand -hex 32)), " +
                $"or run without one on a trusted network with --allow-no-token or {RankConfig.AllowNoTokenVariable}=1");
        }
    }

    private static async Task<IPAddress> ResolveAsync(string host, CancellationToken ct)
    {
        if (IPAddress.TryParse(host, out var ip))
        {
            return ip;
        }
        var all = await Dns.GetHostAddressesAsync(host, ct).ConfigureAwait(false);
        return all.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? all.FirstOrDefault()
            ?? throw new RendezvousException($"MASTER_ADDR {host} does not resolve");
    }

    /// <summary>The address peers reach this rank's data links on: loopback when the store is on loopback, else the interface that routes to the store.</summary>
    private static async Task<IPAddress> AdvertiseAddressAsync(RankConfig config, int port, CancellationToken ct)
    {
        if (config.AdvertiseAddress is { } given)
        {
            return given;
        }
        var master = await ResolveAsync(config.MasterAddr, ct).ConfigureAwait(false);
        if (IPAddress.IsLoopback(master))
        {
            return master;
        }
        using var probe = new Socket(master.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        probe.Connect(master, port);
        return ((IPEndPoint)probe.LocalEndPoint!).Address;
    }

    private static Socket ListenForData(IPAddress address)
    {
        var s = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(address, 0));
        s.Listen(256);
        return s;
    }

    private static string DefaultHostId()
    {
        const string bootId = "/proc/sys/kernel/random/boot_id";
        var boot = File.Exists(bootId) ? File.ReadAllText(bootId).Trim() : "";
        return $"{Environment.MachineName}:{boot}";
    }

    /// <summary>Long-polls the store for dead ranks; the first death (or losing the store) breaks the world.</summary>
    private async Task WatchAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                if (await _watcher.WatchDeadAsync(WatchPoll, _stop.Token).ConfigureAwait(false) is { } death)
                {
                    Break(death.Message);
                    return;
                }
            }
            catch (Exception e) when (!_stop.IsCancellationRequested)
            {
                Break($"lost the rendezvous store (rank 0): {e.Message}");
                return;
            }
            catch (Exception)
            {
                return;
            }
        }
    }

    internal void Break(string reason)
    {
        Interlocked.CompareExchange(ref _brokenReason, reason, null);
        try
        {
            _broken.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Accepts data links from peers: the handshake authenticates the sender and names its group; the group picks the socket up.</summary>
    private async Task AcceptDataLinksAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _dataListener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception)
            {
                if (_stop.IsCancellationRequested)
                {
                    return;
                }
                continue;
            }
            _ = AcceptDataLinkAsync(socket);
        }
    }

    private async Task AcceptDataLinkAsync(Socket socket)
    {
        try
        {
            socket.NoDelay = true;
            Handshake.Claim? claim;
            using (var stream = new NetworkStream(socket, ownsSocket: false))
            {
                claim = await DataLinks.AcceptAsync(stream, socket.RemoteEndPoint, AdmitDataLink, null, _stop.Token).ConfigureAwait(false);
            }
            // A second link for the same slot keeps the first.
            if (claim is not { } c || !_inbound.GetOrAdd((c.Group, c.Rank), NewLink).TrySetResult(socket))
            {
                socket.Dispose();
                return;
            }
            socket.ReceiveBufferSize = 4 << 20;
            socket.SendBufferSize = 4 << 20;
        }
        catch (Exception)
        {
            socket.Dispose();
        }
    }

    private string? AdmitDataLink(Handshake.Claim claim) =>
        claim.Rank < 0 || claim.Rank >= Size ? $"rank {claim.Rank} is outside [0, {Size}) (WORLD_SIZE={Size})"
        : claim.Rank == Rank ? $"rank {Rank} cannot open a data link to itself"
        : claim.Group.Length != LinkIdLength ? "not a data link's group id"
        : null;

    /// <summary>How many groups of this name and membership this rank has created, this one included.</summary>
    internal int NextGeneration(string key) => _generations.AddOrUpdate(key, 1, (_, g) => g + 1);

    /// <summary>The link on which world rank <paramref name="from"/> sends to this rank in <paramref name="group"/> (a group's uid).</summary>
    internal TaskCompletionSource<Socket> InboundLink(string group, int from) => _inbound.GetOrAdd((LinkId(group), from), NewLink);

    private static TaskCompletionSource<Socket> NewLink((string, int) _) => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private const int LinkIdLength = 64;

    /// <summary>What a data link's handshake names its group by: a digest of the group's id, as long for a group of 4096 ranks as for 2 (a handshake frame is small).</summary>
    internal static string LinkId(string group) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(group)));

    internal void ForgetLinks(string group) => ForgetLinkIds(LinkId(group));

    private void ForgetLinkIds(string linkId)
    {
        foreach (var key in _inbound.Keys.Where(k => k.LinkId == linkId).ToList())
        {
            if (_inbound.TryRemove(key, out var tcs) && tcs.Task.IsCompletedSuccessfully)
            {
                tcs.Task.Result.Dispose();
            }
            else
            {
                tcs?.TrySetCanceled();
            }
        }
    }

    /// <summary>
    /// Leaves: closes groups, tells the store this rank leaves on purpose, stops listening. Rank 0 then
    /// keeps the store up until every other rank has left (or the connect timeout passes) and stops it.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }
        _group?.Dispose();
        await _client.ByeAsync().ConfigureAwait(false);
        if (_server is not null)
        {
            await _server.WaitForRanksToLeaveAsync(Config.ConnectTimeout).ConfigureAwait(false);
        }
        _stop.Cancel();
        _watcher.Dispose();
        _dataListener.Dispose();
        foreach (var linkId in _inbound.Keys.Select(k => k.LinkId).Distinct().ToList())
        {
            ForgetLinkIds(linkId);
        }
        _server?.Dispose();
    }
}
