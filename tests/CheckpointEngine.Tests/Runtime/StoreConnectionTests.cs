using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Runtime.Rendezvous;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>Who the store lets in, how it reports dead ranks, and how it survives bad peers and its own end.</summary>
public class StoreConnectionTests
{
    private static readonly TimeSpan Deadline = StoreHarness.StepDeadline;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("wrong")]
    [InlineData(null)]
    [InlineData("")]
    public async Task Connect_WrongToken_RefusedWithoutRetrying(string? token)
    {
        using var h = StoreHarness.Start("right");
        // A client that retried a refusal would run into the step deadline long before its own 10 minutes.
        var e = await Assert.ThrowsAsync<RendezvousException>(() =>
            StoreClient.ConnectAsync("127.0.0.1", h.Port, token, 0, TimeSpan.FromMinutes(10), Ct).WaitAsync(Deadline, Ct));
        Assert.Contains("wrong token", e.Message, StringComparison.Ordinal);
        // The refused rank took no slot.
        await h.ConnectAsync(0);
    }

    [Fact]
    public async Task Connect_RightToken_Accepted()
    {
        using var h = StoreHarness.Start("s3cret");
        var c = await h.ConnectAsync(0);
        await c.SetAsync("k", [1], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([1], await c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Connect_ServerWithoutToken_AcceptsOnlyClientsWithoutOne()
    {
        // No token is the empty key of the same handshake: a client that has a token refuses to trust, and is refused by, a server without it.
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync(0, token: null, useHarnessToken: false);
        Assert.Null(await c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        var e = await Assert.ThrowsAsync<RendezvousException>(() => h.ConnectAsync(1, "anything", useHarnessToken: false));
        Assert.Contains("wrong token", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Connect_SameRankTwice_SecondRefusedUntilFirstLeaves()
    {
        using var h = StoreHarness.Start();
        var first = await h.ConnectAsync(1);
        var e = await Assert.ThrowsAsync<RendezvousException>(() => h.ConnectAsync(1));
        Assert.Contains("already connected", e.Message, StringComparison.Ordinal);
        Assert.Contains("RANK=1", e.Message, StringComparison.Ordinal);
        await first.ByeAsync().WaitAsync(Deadline, Ct);
        // The store frees the rank when it has processed the goodbye, which may trail the client's return by a moment.
        await h.UntilAsync(s => s.ConnectedRanks == 0, "rank 1 gone");
        var again = await h.ConnectAsync(1);
        Assert.Null(await again.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Connect_ManyObservers_AllAccepted()
    {
        using var h = StoreHarness.Start();
        var observers = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => h.ConnectAsync(-1)));
        await Task.WhenAll(observers.Select(o => o.AddAsync("n", 1, Ct))).WaitAsync(Deadline, Ct);
        Assert.Equal(8, await observers[0].AddAsync("n", 0, Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task MemberGoneWithoutBye_PendingWaitFailsNamingIt()
    {
        using var h = StoreHarness.Start();
        var observer = await h.ConnectAsync(-1);
        var watcher = await h.ConnectAsync(-1);
        var member = await h.ConnectAsync(3);
        // Waits of 10 minutes: answered within the step deadline, they were answered by the death, not by their timeout.
        var wait = observer.WaitGetAsync(["never"], TimeSpan.FromMinutes(10), Ct);
        var watch = watcher.WatchDeadAsync(TimeSpan.FromMinutes(10), Ct);
        await h.UntilAsync(s => s.PendingWaits == 2, "the wait and the watch pending");
        Assert.False(wait.IsCompleted);
        Assert.False(watch.IsCompleted);
        member.Dispose();
        var e = await Assert.ThrowsAsync<PeerDiedException>(() => wait.WaitAsync(Deadline, Ct));
        Assert.Equal(3, e.Rank);
        Assert.Contains("rank 3", e.Message, StringComparison.Ordinal);
        var death = await watch.WaitAsync(Deadline, Ct);
        Assert.Equal(3, death?.Rank);
        // From then on every wait fails at once, and watching reports it at once.
        Assert.Equal(3, (await Assert.ThrowsAsync<PeerDiedException>(() =>
            observer.WaitGetAsync(["other"], TimeSpan.FromMinutes(10), Ct).WaitAsync(Deadline, Ct))).Rank);
        Assert.Equal(3, (await watcher.WatchDeadAsync(TimeSpan.FromMinutes(10), Ct).WaitAsync(Deadline, Ct))?.Rank);
    }

    [Fact]
    public async Task MemberSaidBye_NotReportedDead()
    {
        using var h = StoreHarness.Start();
        var observer = await h.ConnectAsync(-1);
        var member = await h.ConnectAsync(2);
        await member.SetAsync("left", [1], Ct).WaitAsync(Deadline, Ct);
        await member.ByeAsync().WaitAsync(Deadline, Ct);
        Assert.Null(await observer.WatchDeadAsync(TimeSpan.FromMilliseconds(300), Ct).WaitAsync(Deadline, Ct));
        var e = await Assert.ThrowsAsync<StoreTimeoutException>(() => observer.WaitGetAsync(["left", "x"], TimeSpan.FromMilliseconds(200), Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(["x"], e.MissingKeys);
        // Observers come and go without being reported either.
        (await h.ConnectAsync(-1)).Dispose();
        Assert.Null(await observer.WatchDeadAsync(TimeSpan.FromMilliseconds(300), Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Connect_NothingListening_FailsAfterTimeoutNamingHostPort()
    {
        var port = TestPorts.Free();
        var attempts = 0;
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RendezvousException>(() =>
            StoreClient.ConnectAsync("127.0.0.1", port, null, 0, TimeSpan.FromSeconds(1), _ => Interlocked.Increment(ref attempts), Ct).WaitAsync(Deadline, Ct));
        // It kept trying, and gave up no earlier than its timeout (a lower bound: timers never fire early).
        Assert.True(attempts >= 2, $"{attempts} failed attempts");
        Assert.True(sw.Elapsed >= TimeSpan.FromSeconds(0.9), $"gave up after {sw.Elapsed}");
        Assert.Contains($"127.0.0.1:{port} (rank 0) within 1 s", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Connect_BeforeServerStarts_RetriesUntilItIsUp()
    {
        var port = TestPorts.Free();
        var refused = new TaskCompletionSource<Exception>(TaskCreationOptions.RunContinuationsAsynchronously);
        var connect = StoreClient.ConnectAsync("127.0.0.1", port, "t", 0, TimeSpan.FromMinutes(10), e => refused.TrySetResult(e), Ct);
        Assert.IsType<SocketException>(await refused.Task.WaitAsync(Deadline, Ct));
        Assert.False(connect.IsCompleted);
        using var server = StoreServer.Start(IPAddress.Loopback, port, "t", 1);
        using var client = await connect.WaitAsync(Deadline, Ct);
        await client.SetAsync("k", [1], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([1], await client.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Start_PortTaken_ThrowsNamingIt()
    {
        using var h = StoreHarness.Start();
        var e = Assert.Throws<RendezvousException>(() => StoreServer.Start(IPAddress.Loopback, h.Port, null, 1));
        Assert.Contains($":{h.Port}", e.Message, StringComparison.Ordinal);
        await Task.CompletedTask;
    }

    [Fact]
    public async Task ServerDispose_PendingAndLaterCallsFailInsteadOfHanging()
    {
        using var h = StoreHarness.Start();
        var waiter = await h.ConnectAsync(0);
        var watcher = await h.ConnectAsync(-1);
        var idle = await h.ConnectAsync(1);
        var wait = waiter.WaitGetAsync(["never"], TimeSpan.FromMinutes(10), Ct);
        var watch = watcher.WatchDeadAsync(TimeSpan.FromMinutes(10), Ct);
        await h.UntilAsync(s => s.PendingWaits == 2, "the wait and the watch pending");
        h.Server.Dispose();
        var e = await Assert.ThrowsAnyAsync<RendezvousException>(() => wait.WaitAsync(Deadline, Ct));
        Assert.False(e is StoreTimeoutException or PeerDiedException, e.ToString());
        await Assert.ThrowsAnyAsync<RendezvousException>(() => watch.WaitAsync(Deadline, Ct));
        await Assert.ThrowsAnyAsync<RendezvousException>(() => idle.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        await Assert.ThrowsAnyAsync<RendezvousException>(() =>
            StoreClient.ConnectAsync("127.0.0.1", h.Port, null, 5, TimeSpan.FromSeconds(1), Ct).WaitAsync(Deadline, Ct));
    }

    public static TheoryData<string, byte[]> BadOpenings => new()
    {
        { "text", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray() },
        { "huge length", [0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3] },
        { "negative length", [0, 0, 0, 0x80] },
        { "zero length", [0, 0, 0, 0] },
        { "big hello", [0, 0, 0x10, 0, 1] }, // 1 MiB: within a frame's limit, far over a handshake's.
        { "5 KiB hello", [0, 0x14, 0, 0, 1] },
        { "not a hello", new Writer().Byte((byte)Op.Set).String("k").Bytes([1]).ToFrame().ToArray() },
        { "short hello", new Writer().String("ckpt-engine-handshake/1").Int32(100).ToFrame().ToArray() },
        { "hello without rank", new Writer().String("ckpt-engine-handshake/1").String("rendezvous store").Bytes(new byte[32]).ToFrame().ToArray() },
    };

    [Theory]
    [MemberData(nameof(BadOpenings))]
    public async Task BadOpening_ConnectionDroppedAndStoreKeepsWorking(string what, byte[] bytes)
    {
        using var h = StoreHarness.Start();
        var good = await h.ConnectAsync(0);
        var raw = await h.RawAsync();
        await raw.SendAsync(bytes, Ct).AsTask().WaitAsync(Deadline, Ct);
        Assert.True(await RawPeer.ClosedByServerAsync(raw), what);
        await good.SetAsync("k", [1], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([1], await (await h.ConnectAsync(1)).GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        // A bad stranger is never counted as a dead rank.
        Assert.Null(await good.WatchDeadAsync(TimeSpan.FromMilliseconds(100), Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task SilentConnections_DoNotBlockOthers()
    {
        using var h = StoreHarness.Start();
        for (var i = 0; i < 5; i++)
        {
            await h.RawAsync();
        }
        var c = await h.ConnectAsync(0);
        Assert.Equal(1, await c.AddAsync("n", 1, Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task MalformedRequestAfterHello_OnlyThatConnectionEnds()
    {
        using var h = StoreHarness.Start();
        var good = await h.ConnectAsync(0);
        var stream = await h.AuthenticatedAsync();
        // An unknown op is answered with an error; the connection stays.
        var reply = await CallAsync(stream, new Writer().Byte(200));
        Assert.Equal((byte)Status.Error, reply[0]);
        // A wait with a negative timeout is answered at once.
        reply = await CallAsync(stream, new Writer().Byte((byte)Op.WaitGet).Int32(1).String("nope").Int64(-5));
        Assert.Equal((byte)Status.Timeout, reply[0]);
        // A key count far beyond the frame ends the connection without allocating for it.
        await stream.WriteAsync(new Writer().Byte((byte)Op.WaitGet).Int32(int.MaxValue).Int64(10).ToFrame(), Ct).AsTask().WaitAsync(Deadline, Ct);
        Assert.True(await RawPeer.ClosedByServerAsync(stream.Socket));
        Assert.Equal(1, await good.AddAsync("n", 1, Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await good.WatchDeadAsync(TimeSpan.FromMilliseconds(100), Ct).WaitAsync(Deadline, Ct));
    }

    private static async Task<byte[]> CallAsync(NetworkStream stream, Writer request)
    {
        await stream.WriteAsync(request.ToFrame(), Ct).AsTask().WaitAsync(Deadline, Ct);
        return (await ReadFrameAsync(stream, Ct).WaitAsync(Deadline, Ct))!;
    }
}
