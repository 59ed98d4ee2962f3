using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Runtime.Rendezvous;
using CheckpointEngine.Runtime.Security;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>
/// The three listeners of a rank (rendezvous store, data links, P2P store) under the attacks of a
/// hostile peer: each case reproduces one and shows it now fails safely, on real loopback sockets.
/// </summary>
public class ListenerSecurityTests
{
    private const string Token = "fleet-secret";
    private static readonly TimeSpan Deadline = StoreHarness.StepDeadline;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Listeners => [Handshake.Store, Handshake.DataLink, Handshake.P2P];

    [Theory]
    [MemberData(nameof(Listeners))]
    public async Task WrongToken_RefusedWithANamedError_AndLoggedNamingThePeer(string listener)
    {
        await using var target = await Target.StartAsync(listener);
        using var socket = await RawPeer.ConnectAsync(target.Endpoint);
        using var stream = new NetworkStream(socket);
        var e = await Assert.ThrowsAsync<HandshakeException>(() =>
            new Handshake("guess", listener).ConnectAsync(stream, target.Claim, target.Endpoint.ToString(), Ct).WaitAsync(Deadline, Ct));
        Assert.Contains($"the {listener} at {target.Endpoint} refused", e.Message, StringComparison.Ordinal);
        Assert.Contains("wrong token", e.Message, StringComparison.Ordinal);
        Assert.Contains(RankConfig.TokenVariable, e.Message, StringComparison.Ordinal);
        await target.Log.WaitForAsync(Deadline, $"{listener}: ", $"at {socket.LocalEndPoint} failed authentication: wrong token");
    }

    [Theory]
    [MemberData(nameof(Listeners))]
    public async Task ServerWithoutTheToken_IsNotTrustedByTheClient(string listener)
    {
        // Mutual: a listener that does not know the token (an impostor on the rank's port) cannot pass as one of ours.
        await using var impostor = await Target.StartAsync(listener, token: "impostor");
        using var socket = await RawPeer.ConnectAsync(impostor.Endpoint);
        using var stream = new NetworkStream(socket);
        var e = await Assert.ThrowsAsync<HandshakeException>(() =>
            new Handshake(Token, listener).ConnectAsync(stream, impostor.Claim, impostor.Endpoint.ToString(), Ct).WaitAsync(Deadline, Ct));
        Assert.Contains("wrong token", e.Message, StringComparison.Ordinal); // The impostor refuses our proof; it never gets one to check against its own.
    }

    [Theory]
    [MemberData(nameof(Listeners))]
    public async Task RecordedHandshake_ReplayedOnANewConnection_Fails(string listener)
    {
        await using var target = await Target.StartAsync(listener);
        byte[] recorded;
        using (var honest = await RawPeer.ConnectAsync(target.Endpoint))
        {
            var wire = new RecordingStream(new NetworkStream(honest));
            await new Handshake(Token, listener).ConnectAsync(wire, target.Claim, target.Endpoint.ToString(), Ct).WaitAsync(Deadline, Ct);
            recorded = wire.Written;
        }
        await target.ReleaseAsync(); // The honest rank left (a store frees its slot), so only the proof can stop the replay.

        using var replay = await RawPeer.ConnectAsync(target.Endpoint);
        using var stream = new NetworkStream(replay);
        await stream.WriteAsync(recorded, Ct).AsTask().WaitAsync(Deadline, Ct);
        var challenge = await ReadFrameAsync(stream, Ct).WaitAsync(Deadline, Ct);
        Assert.Equal((byte)Status.Ok, challenge![0]); // A fresh nonce, which the recorded proof does not cover...
        var verdict = await ReadFrameAsync(stream, Ct).WaitAsync(Deadline, Ct);
        var reader = new Reader(verdict);
        Assert.Equal((byte)Status.Error, reader.Byte());
        Assert.Contains("wrong token", reader.String(), StringComparison.Ordinal);
        Assert.True(await RawPeer.ClosedByServerAsync(replay));
        await target.Log.WaitForAsync(Deadline, $"at {replay.LocalEndPoint} failed authentication: wrong token");
        await target.AssertServesAsync();
    }

    [Theory]
    [MemberData(nameof(Listeners))]
    public async Task LargeLengthPrefixBeforeAuthentication_IsCutOffAtOnce(string listener)
    {
        // The old attack: announce a 63 MiB frame and send it. The listener takes at most a handshake frame (4 KiB) and closes.
        await using var target = await Target.StartAsync(listener);
        using var socket = await RawPeer.ConnectAsync(target.Endpoint);
        var chunk = new byte[1 << 20];
        BitConverter.TryWriteBytes(chunk, 63 << 20);
        long sent = 0;
        var failed = false;
        try
        {
            while (sent < 63 << 20)
            {
                sent += await socket.SendAsync(chunk, Ct).AsTask().WaitAsync(Deadline, Ct);
            }
        }
        catch (SocketException)
        {
            failed = true;
        }
        Assert.True(failed || await RawPeer.ClosedByServerAsync(socket), $"sent {sent} bytes and the connection is still open");
        Assert.True(sent < 63 << 20, $"the listener took all {sent} bytes of a frame announced before authentication");
        await target.Log.WaitForAsync(Deadline, $"at {socket.LocalEndPoint} failed authentication: broken handshake: frame length {63 << 20} is outside [1, {Handshake.MaxFrame}]");
        await target.AssertServesAsync();
    }

    [Theory]
    [MemberData(nameof(Listeners))]
    public async Task SilentConnections_DoNotStopAnHonestPeer_AndAreClosedAtTheHandshakeDeadline(string listener)
    {
        await using var target = await Target.StartAsync(listener);
        target.Handshake.Deadline = TimeSpan.FromSeconds(1);
        var silent = new List<Socket>();
        try
        {
            for (var i = 0; i < 20; i++)
            {
                silent.Add(await RawPeer.ConnectAsync(target.Endpoint));
            }
            await target.AssertServesAsync(); // While they sit, within the step deadline.
            // Each is closed by its handshake deadline (1 s), far inside the 10 s a test allows before calling it open.
            foreach (var s in silent)
            {
                Assert.True(await RawPeer.ClosedByServerAsync(s, TimeSpan.FromSeconds(10)));
            }
            await target.Log.WaitForAsync(Deadline, $"at {silent[^1].LocalEndPoint} failed authentication: no handshake within 1 s");
            await NoPendingAsync(target.Handshake);
        }
        finally
        {
            silent.ForEach(s => s.Dispose());
        }
    }

    [Theory]
    [MemberData(nameof(Listeners))]
    public async Task OverTheCap_FurtherUnauthenticatedConnectionsAreClosedAtOnce(string listener)
    {
        await using var target = await Target.StartAsync(listener);
        target.Handshake.MaxPending = 4;
        target.Handshake.Deadline = TimeSpan.FromMinutes(5);
        var pending = new List<Socket>();
        try
        {
            for (var i = 0; i < 4; i++)
            {
                pending.Add(await RawPeer.ConnectAsync(target.Endpoint));
            }
            await NoPendingAsync(target.Handshake, count: 4);
            using var extra = await RawPeer.ConnectAsync(target.Endpoint);
            // Closed without waiting for its handshake deadline of 5 minutes.
            Assert.True(await RawPeer.ClosedByServerAsync(extra, Deadline));
            Assert.Equal(4, target.Handshake.Pending);
        }
        finally
        {
            pending.ForEach(s => s.Dispose());
        }
        await NoPendingAsync(target.Handshake);
        await target.AssertServesAsync();
    }

    [Theory]
    [InlineData(4242)]
    [InlineData(8)]
    [InlineData(-5)]
    public async Task Store_RankOutsideTheWorld_IsRefused_AndTheWorldIsNotMarkedBroken(int rank)
    {
        using var h = StoreHarness.Start(Token, worldSize: 8);
        var watcher = await h.ConnectAsync(-1);
        // The old attack: claim rank 4242, then disconnect. The refused claim never counts as a rank, so its end is no death.
        var e = await Assert.ThrowsAsync<RendezvousException>(() => h.ConnectAsync(rank));
        Assert.Contains($"refused rank {rank}: rank {rank} is outside [0, 8) (WORLD_SIZE=8; tools connect as -1)", e.Message, StringComparison.Ordinal);
        await h.Refusals.WaitForAsync(Deadline, $"rendezvous store: rank {rank} at 127.0.0.1:", $"was refused: rank {rank} is outside [0, 8)");
        Assert.Equal(0, h.Server.ConnectedRanks);
        Assert.Null(await watcher.WatchDeadAsync(TimeSpan.FromMilliseconds(200), Ct).WaitAsync(Deadline, Ct));
        var member = await h.ConnectAsync(7);
        Assert.Equal(1, await member.AddAsync("n", 1, Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Store_UnauthenticatedHelloForARank_NeitherTakesItsSlotNorBreaksTheWorld()
    {
        using var h = StoreHarness.Start(Token, worldSize: 4);
        var watcher = await h.ConnectAsync(-1);
        await Assert.ThrowsAsync<RendezvousException>(() => h.ConnectAsync(3, "guess"));
        Assert.Null(await watcher.WatchDeadAsync(TimeSpan.FromMilliseconds(200), Ct).WaitAsync(Deadline, Ct));
        var rank3 = await h.ConnectAsync(3);
        await rank3.SetAsync("k", [3], Ct).WaitAsync(Deadline, Ct);
    }

    [Theory]
    [InlineData(4242, "rank 4242 is outside [0, 2) (WORLD_SIZE=2)")]
    [InlineData(-1, "rank -1 is outside [0, 2) (WORLD_SIZE=2)")]
    [InlineData(0, "rank 0 cannot open a data link to itself")]
    public async Task DataLink_RankOutsideTheWorldOrItself_IsRefusedNamingIt(int rank, string why)
    {
        await using var target = await Target.StartAsync(Handshake.DataLink);
        using var socket = await RawPeer.ConnectAsync(target.Endpoint);
        using var stream = new NetworkStream(socket);
        var e = await Assert.ThrowsAsync<HandshakeException>(() =>
            new Handshake(Token, Handshake.DataLink).ConnectAsync(stream, target.Claim with { Rank = rank }, "rank 0", Ct).WaitAsync(Deadline, Ct));
        Assert.Contains(why, e.Message, StringComparison.Ordinal);
        await target.Log.WaitForAsync(Deadline, "data-link listener: ", $"at {socket.LocalEndPoint} was refused: {why}");
    }

    [Fact]
    public async Task P2P_UnauthenticatedClient_CannotReadARegisteredBuffer()
    {
        await using var target = await Target.StartAsync(Handshake.P2P);
        // The old attack: skip the handshake and send a read request for the registered buffer straight away.
        using var socket = await RawPeer.ConnectAsync(target.Endpoint);
        var request = new Writer().Int32(1).String(Target.Buffer).Int64(0).Int64(Target.BufferBytes).ToFrame();
        await socket.SendAsync(request, Ct).AsTask().WaitAsync(Deadline, Ct);
        var got = new byte[Target.BufferBytes + 16];
        var total = 0;
        try
        {
            int n;
            while ((n = await socket.ReceiveAsync(got.AsMemory(total), Ct).AsTask().WaitAsync(Deadline, Ct)) > 0)
            {
                total += n;
            }
        }
        catch (SocketException)
        {
        }
        Assert.Equal(0, total); // Not a byte: no reply, no data, just the close.
        // And a reader with any other token (or none) is refused by name.
        using var stranger = new TcpP2PStore(IPAddress.Loopback, token: null);
        using var landing = CheckpointEngine.Memory.NativeBuffer.Allocate(16);
        var e = await Assert.ThrowsAsync<P2PException>(() => stranger.ReadAsync(target.P2PAddress, [new(Target.Buffer, 0, 16, landing.Address)], Deadline, Ct));
        Assert.Contains("wrong token", e.Message, StringComparison.Ordinal);
    }

    /// <summary>Returns once the listener has <paramref name="count"/> connections in their handshake.</summary>
    private static Task NoPendingAsync(Handshake handshake, int count = 0) =>
        UntilAsync(() => handshake.Pending == count, $"{count} connections in their handshake", h => handshake.PendingChanged += h, h => handshake.PendingChanged -= h);

    /// <summary>Returns once <paramref name="condition"/> holds, looked at again at each event (never by sleeping); fails the test past the step deadline.</summary>
    private static async Task UntilAsync(Func<bool> condition, string what, Action<Action> subscribe, Action<Action> unsubscribe)
    {
        while (true)
        {
            var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            void OnChanged() => changed.TrySetResult();
            subscribe(OnChanged); // Before looking, so that no change between the look and the wait is missed.
            try
            {
                if (condition())
                {
                    return;
                }
                await changed.Task.WaitAsync(Deadline, Ct);
            }
            catch (TimeoutException)
            {
                Assert.Fail($"never got to: {what}");
            }
            finally
            {
                unsubscribe(OnChanged);
            }
        }
    }

    /// <summary>One listener of a rank, running with <see cref="Token"/>, its refusals captured.</summary>
    private sealed class Target : IAsyncDisposable
    {
        public const string Buffer = "ckpt/0";
        public const int BufferBytes = 1 << 16;

        private readonly List<Func<Task>> _owned = [];
        private StoreServer? _store;
        private TcpP2PStore? _p2p;

        private Target(string listener) => Listener = listener;

        public string Listener { get; }

        public IPEndPoint Endpoint { get; private set; } = null!;

        public Handshake Handshake { get; private set; } = null!;

        /// <summary>What an honest client of this listener claims.</summary>
        public Handshake.Claim Claim { get; private set; }

        public LogLines Log { get; } = new();

        public string P2PAddress => _p2p!.Address;

        public static async Task<Target> StartAsync(string listener, string token = Token)
        {
            var t = new Target(listener);
            switch (listener)
            {
                case Handshake.Store:
                    t._store = StoreServer.Start(IPAddress.Loopback, 0, token, 4);
                    t._owned.Add(() => { t._store.Dispose(); return Task.CompletedTask; });
                    (t.Endpoint, t.Handshake, t.Claim) = (t._store.Endpoint, t._store.Handshake, new Handshake.Claim(1));
                    break;
                case Handshake.DataLink:
                    // Two ranks on "different hosts": rank 0's data-link listener is the target, rank 1 the honest peer.
                    var port = TestPorts.Free();
                    RankConfig Config(int rank) => new() { Rank = rank, WorldSize = 2, MasterPort = port, Token = token, HostId = $"host{rank}", ConnectTimeout = Deadline };
                    var worlds = await Task.WhenAll(World.JoinAsync(Config(0), Ct), World.JoinAsync(Config(1), Ct)).WaitAsync(TimeSpan.FromSeconds(30), Ct);
                    t._owned.Add(() => Task.WhenAll(worlds.Select(w => w.DisposeAsync().AsTask())));
                    (t.Endpoint, t.Handshake, t.Claim) = (worlds[0].DataEndpoint, worlds[0].DataLinks, new Handshake.Claim(1, World.LinkId("test-group")));
                    break;
                default:
                    t._p2p = new TcpP2PStore(IPAddress.Loopback, token);
                    var memory = CheckpointEngine.Memory.NativeBuffer.Allocate(BufferBytes);
                    t._owned.Add(() => { t._p2p.Dispose(); memory.Dispose(); return Task.CompletedTask; });
                    t._p2p.Register(Buffer, memory.Address, BufferBytes);
                    var colon = t._p2p.Address.LastIndexOf(':');
                    (t.Endpoint, t.Handshake, t.Claim) = (new IPEndPoint(IPAddress.Parse(t._p2p.Address[..colon]), int.Parse(t._p2p.Address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture)),
                        t._p2p.Handshake, new Handshake.Claim(-1));
                    break;
            }
            t.Handshake.Logger = t.Log;
            return t;
        }

        /// <summary>Waits until an honest client's claim is free again (the store frees a rank when its connection ends).</summary>
        public async Task ReleaseAsync()
        {
            if (_store is not null)
            {
                await UntilAsync(() => _store.ConnectedRanks == 0, "the store freed the honest rank", h => _store.Changed += h, h => _store.Changed -= h);
            }
        }

        /// <summary>An honest client still gets through the handshake promptly.</summary>
        public async Task AssertServesAsync()
        {
            await ReleaseAsync();
            using var socket = await RawPeer.ConnectAsync(Endpoint);
            using var stream = new NetworkStream(socket);
            await new Handshake(Token, Listener).ConnectAsync(stream, Claim, Endpoint.ToString(), Ct).WaitAsync(Deadline, Ct);
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var dispose in Enumerable.Reverse(_owned))
            {
                await dispose();
            }
        }
    }
}
