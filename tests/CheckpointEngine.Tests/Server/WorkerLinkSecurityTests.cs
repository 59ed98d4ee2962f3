using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;
using CheckpointEngine.Server;
using CheckpointEngine.Tests.Support;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Server;

/// <summary>
/// The worker link against a hostile local user (a program running as <c>nobody</c>) and against a
/// stale worker of an earlier update: the real worker still gets the update, and nobody else gets or
/// injects a byte.
/// </summary>
public sealed class WorkerLinkSecurityTests
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private static readonly byte[] Weights = [.. Enumerable.Range(0, 256).Select(i => (byte)(i * 7))];

    /// <summary>
    /// Connects to the abstract socket in argv[1] (retrying), presents a guessed session key, prints
    /// "connected", then reads to the end and prints how much it got (a same-user peer with a wrong key
    /// would get an abort; another user gets nothing at all).
    /// </summary>
    private const string Eavesdropper = """
        import json, socket, struct, sys, time
        s = socket.socket(socket.AF_UNIX)
        for _ in range(400):
            try:
                s.connect("\0" + sys.argv[1][1:]); break
            except OSError:
                time.sleep(0.05)
        hello = json.dumps({"session": "0" * 64}).encode()
        s.sendall(struct.pack("<i", len(hello)) + hello)
        print("connected", flush=True)
        s.settimeout(60)
        got = b""
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b: break
            got += b
        print("closed after %d bytes" % len(got), flush=True)
        """;

    /// <summary>Connects and closes at once, argv[2] times, then prints "done".</summary>
    private const string KnockAndLeave = """
        import socket, sys
        for _ in range(int(sys.argv[2])):
            s = socket.socket(socket.AF_UNIX); s.connect("\0" + sys.argv[1][1:]); s.close()
        print("done", flush=True)
        """;

    /// <summary>Binds the abstract socket in argv[1] first, then serves a forged attach to whoever connects.</summary>
    private const string Squatter = """
        import json, socket, struct, sys
        l = socket.socket(socket.AF_UNIX); l.bind("\0" + sys.argv[1][1:]); l.listen(1)
        print("listening", flush=True)
        c, _ = l.accept()
        m = json.dumps({"type": "attach", "kind": "shm", "handle": "forged", "size": 64, "device_id": "d"}).encode()
        c.settimeout(10)
        try:
            c.sendall(struct.pack("<i", len(m)) + m)  # The worker may have hung up already.
            got = c.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            got = b""
        print("got %r" % got, flush=True)
        """;

    [Fact]
    public async Task AnotherUserConnectedFirst_GetsNotOneByte_AndTheRealWorkerGetsTheUpdate()
    {
        await using var rank = await SingleRank.StartAsync(Weights);
        await using var eavesdropper = OtherUser.StartPython(Eavesdropper, rank.Server.WorkerAddress);
        Assert.Equal("connected", await eavesdropper.ReadLineAsync(Deadline));

        var received = (await rank.UpdateAsync()).Received.Single().Value;

        Assert.Equal(Weights, received);
        Assert.Equal("closed after 0 bytes", await eavesdropper.ReadLineAsync(Deadline));
    }

    [Fact]
    public async Task AnotherUserKnockedAndLeft_BeforeTheUpdate_DoesNotFailIt()
    {
        await using var rank = await SingleRank.StartAsync(Weights);
        await using var knocker = OtherUser.StartPython(KnockAndLeave, rank.Server.WorkerAddress, "5");
        Assert.Equal("done", await knocker.ReadLineAsync(Deadline));

        var received = (await rank.UpdateAsync()).Received.Single().Value;

        Assert.Equal(Weights, received);
    }

    [Fact]
    public async Task AnotherUserSquatsTheSocketName_TheWorkerRefusesIt_BeforeSendingOrLoadingAnything()
    {
        var ticket = WorkerTicket.New("@ckpt-test-squat-" + Guid.NewGuid().ToString("N")[..12]);
        await using var squatter = OtherUser.StartPython(Squatter, ticket.Address);
        Assert.Equal("listening", await squatter.ReadLineAsync(Deadline));
        var loaded = false;

        var e = await Assert.ThrowsAsync<WeightReceiveException>(() =>
            WeightReceiver.ReceiveAsync(ticket.ToString(), (_, _) => loaded = true, null, Deadline, TestContext.Current.CancellationToken));

        Assert.Matches($@"^the process listening at {ticket.Address} \(pid \d+\) runs as uid {OtherUser.Uid}, not as this process's uid 0: refused", e.Message);
        Assert.False(loaded);
        Assert.Equal("got b''", await squatter.ReadLineAsync(Deadline)); // Not even the session key reached it.
    }

    [Fact]
    public async Task AStaleWorkerOfAnEarlierUpdate_IsRefused_AndTheNextUpdateGoesToTheRealWorker()
    {
        await using var rank = await SingleRank.StartAsync(Weights);
        WorkerTicket? stale = null;
        // The first update's engine never connects: the update times out.
        var failed = await Assert.ThrowsAsync<UpdateFailedException>(() => rank.Server.UpdateAsync("step-1", UpdateMode.Broadcast, (context, _) =>
        {
            stale = context.Sockets.Single().Ticket;
            return Task.CompletedTask;
        }, new UpdateOptions { Timeout = TimeSpan.FromSeconds(1) }, TestContext.Current.CancellationToken));
        Assert.Contains("did not connect", failed.Message, StringComparison.Ordinal);

        // Its worker shows up late and waits in the backlog for whoever accepts next.
        var late = WeightReceiver.ReceiveAsync(stale!.ToString(), (_, _) => Assert.Fail("the stale worker must not load"), null, Deadline, TestContext.Current.CancellationToken);
        WorkerTicket? next = null;
        var received = (await rank.UpdateAsync(sawTicket: t => next = t)).Received.Single().Value;

        Assert.Equal(Weights, received);
        Assert.NotEqual(stale.Session, next!.Session);
        var refused = await Assert.ThrowsAsync<WeightUpdateAbortedException>(() => late);
        Assert.Contains("the session key is not this update's", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ASameUserConnectionWithoutTheSessionKey_IsRefused_TheUpdateStillSucceeds()
    {
        await using var rank = await SingleRank.StartAsync(Weights);
        // Connected and its guessed key sent before the update starts: it is first in the backlog.
        using var intruder = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await intruder.ConnectAsync(WorkerSockets.EndPoint(rank.Server.WorkerAddress), TestContext.Current.CancellationToken);
        using var stream = new System.Net.Sockets.NetworkStream(intruder);
        await WorkerFraming.WriteAsync(stream, new WorkerHello(new string('0', WorkerTicket.SessionLength)), TestContext.Current.CancellationToken);

        var received = (await rank.UpdateAsync()).Received.Single().Value;

        Assert.Equal(Weights, received);
        var answer = await WorkerFraming.ReadAsync<WorkerMessage>(stream, TestContext.Current.CancellationToken).WaitAsync(Deadline, TestContext.Current.CancellationToken);
        Assert.Contains("the session key is not this update's", Assert.IsType<AbortMessage>(answer).Reason, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("@ckpt-engine-host-x-0", "is a bare socket address, not a worker ticket")]
    [InlineData("@ckpt-engine-host-x-0#abc", "has a malformed session key (expected 64 hex digits)")]
    [InlineData("#00000000000000000000000000000000000000000000000000000000000000000", "is a bare socket address")]
    public void Tickets_Malformed_AreRefusedSayingWhy(string ticket, string why)
    {
        var e = Assert.Throws<ArgumentException>(() => WorkerTicket.Parse(ticket));
        Assert.Contains(why, e.Message, StringComparison.Ordinal);
    }
}

/// <summary>Worker sockets as files (<c>CKPT_ENGINE_SOCKET_DIR</c>): a live parameter server's file is never taken over; a dead one's is.</summary>
public sealed class WorkerSocketFileTests
{
    [Fact]
    public async Task SecondServerForTheDevice_IsRefused_AndTheFirstKeepsItsSocket_AStaleFileIsReplaced()
    {
        using var dir = new TempDirectory();
        var id = "file-test-" + Guid.NewGuid().ToString("N")[..8];
        using (var first = new WorkerLink(id, dir.Path))
        {
            var e = Assert.Throws<CheckpointEngineException>(() => new WorkerLink(id, dir.Path));
            Assert.Contains("another process (another parameter server?) holds it", e.Message, StringComparison.Ordinal);
            using var client = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            client.Connect(WorkerSockets.EndPoint(first.Address)); // Still the first one's.
        }

        // A file left by a process that died without unlinking it.
        var stale = WorkerSockets.AddressFor(id, dir.Path);
        var (code, output) = await TestProcess.RunAsync("/usr/bin/python3", ["-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", stale], TimeSpan.FromSeconds(30));
        Assert.True(code == 0 && File.Exists(stale), output);
        using var next = new WorkerLink(id, dir.Path);
        Assert.Equal(stale, next.Address);
    }
}
