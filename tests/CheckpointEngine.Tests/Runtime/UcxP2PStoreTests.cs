using System.Net;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Tests.Support;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>
/// Reads cut off while UCX gets are in flight, and owners stopping under leases. The owner's progress thread
/// is held (between processes of a host UCX 1.13 serves gets through it), so the gets stay in flight until the
/// test lets them go: every case is deterministic. UCX 1.13 cannot cancel such gets, so the reader's worker is
/// destroyed under them (retired) before the read fails, and the next read makes a new one.
/// </summary>
public sealed class UcxP2PStoreTests : IDisposable
{
    private const int Size = 24 << 20;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(20);
    private readonly List<IDisposable> _owned = [];
    private readonly NativeBuffer _source = NativeBuffer.Allocate(Size);
    private readonly NativeBuffer _target = NativeBuffer.Allocate(Size);
    private readonly NativeBuffer _other = NativeBuffer.Allocate(Size);
    private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public UcxP2PStoreTests()
    {
        var bytes = _source.AsSpan(0, Size);
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 13 + (i >> 9));
        }
    }

    public void Dispose()
    {
        _release.TrySetResult(); // Never leave an owner's progress thread held.
        foreach (var d in Enumerable.Reverse(_owned))
        {
            d.Dispose();
        }
        _source.Dispose();
        _target.Dispose();
        _other.Dispose();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <param name="tls">null: a rank's default (UCX's shared-memory transports and CMA); "tcp": UCX_TLS=tcp set on both sides, whose endpoints report a failed peer.</param>
    private UcxP2PStore Store(string? tls = null)
    {
        P2PStores.RequireUcx();
        var store = tls is null ? (UcxP2PStore)P2PStores.Create(P2PStores.Ucx, "secret")
            : new UcxP2PStore(IPAddress.Loopback, "secret", new Dictionary<string, string> { ["TLS"] = tls }, peerErrors: true);
        _owned.Add(store);
        return store;
    }

    /// <summary>An owner with the source registered, a reader that has read from it once (endpoint made), and the owner's progress held.</summary>
    private async Task<(UcxP2PStore Owner, UcxP2PStore Reader, UcxWorker Worker, Task GetsInFlight)> HeldPair(string? tls = null)
    {
        var owner = Store(tls);
        owner.Register("ckpt/0", _source.Address, Size);
        owner.Register("ckpt/1", _source.Address, Size);
        var reader = Store(tls);
        await reader.ReadAsync(owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct);
        var inFlight = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var worker = reader.Reader;
        worker.GetsInFlight += () => inFlight.TrySetResult();
        owner.Worker.Pause(_release.Task);
        return (owner, reader, worker, inFlight.Task);
    }

    private static void AssertRetired(UcxWorker worker)
    {
        Assert.True(worker.Retired);
        Assert.Equal(0, worker.InFlight);
    }

    [Fact]
    public async Task Read_CutOffByItsDeadline_WithGetsInFlight_EndsWithNoneInFlight_AndLateRepliesNeverLand()
    {
        var (owner, reader, worker, inFlight) = await HeldPair();
        _target.AsSpan(0, Size).Clear();
        var read = reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromSeconds(1), Ct);
        await inFlight.WaitAsync(Deadline, Ct);
        var e = await Assert.ThrowsAsync<P2PException>(() => read.WaitAsync(Deadline, Ct));
        Assert.Equal($"P2P owner {owner.Address} did not send its data within the deadline", e.Message);
        // UCX cannot cancel these gets (the owner's reply ends them): the worker was destroyed under them before the read returned.
        AssertRetired(worker);

        // The owner now serves what was asked of it before; a new read (on a new worker) lands, the old destination stays untouched.
        _target.AsSpan(0, Size).Clear();
        _release.SetResult();
        await reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _other.Address)], Deadline, Ct);
        Assert.True(_source.AsSpan(0, Size).SequenceEqual(_other.AsSpan(0, Size)));
        Assert.False(_target.AsSpan(0, Size).ContainsAnyExcept((byte)0));
    }

    [Fact]
    public async Task Read_Canceled_WithGetsInFlight_EndsWithNoneInFlight()
    {
        var (owner, reader, worker, inFlight) = await HeldPair();
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var read = reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromMinutes(10), cancel.Token);
        await inFlight.WaitAsync(Deadline, Ct);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read.WaitAsync(Deadline, Ct));
        AssertRetired(worker);
    }

    [Fact]
    public async Task OwnerStopping_WhileAReaderHoldsALease_FailsTheReaderNamingIt_AndStopsOnceReleased()
    {
        var (owner, reader, worker, inFlight) = await HeldPair();
        var address = owner.Address;
        var read = reader.ReadAsync(address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromMinutes(10), Ct);
        await inFlight.WaitAsync(Deadline, Ct);
        var stopping = Task.Run(owner.Dispose, Ct); // Closes the lease's connection, then waits for its progress thread to unmap.

        var e = await Assert.ThrowsAsync<P2PException>(() => read.WaitAsync(Deadline, Ct));
        Assert.Equal($"P2P owner {address} closed the connection mid-read (did it exit?)", e.Message);
        AssertRetired(worker);
        Assert.False(stopping.IsCompleted);
        _release.SetResult();
        await stopping.WaitAsync(Deadline, Ct);
        Assert.Throws<ObjectDisposedException>(() => owner.Register("ckpt/1", _source.Address, 64)); // Refused, not left waiting on a gone thread.
    }

    [Fact]
    public async Task ReaderStopping_MidRead_FailsTheReadSayingSo_AndStops()
    {
        var (owner, reader, worker, inFlight) = await HeldPair();
        var read = reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromMinutes(10), Ct);
        await inFlight.WaitAsync(Deadline, Ct);
        await Task.Run(reader.Dispose, Ct).WaitAsync(Deadline, Ct);
        var e = await Assert.ThrowsAsync<P2PException>(() => read.WaitAsync(Deadline, Ct));
        Assert.Contains(owner.Address, e.Message); // "stopped: this P2P store is closing", or its lease's connection seen closed first.
        AssertRetired(worker);
    }

    [Fact]
    public async Task Retiring_UnderTwoReads_FailsTheOtherNamingItsOwnOwner_AndTheNextReadFromItWorksOnANewWorker()
    {
        var (owner, reader, worker, _) = await HeldPair();
        var other = Store();
        other.Register("ckpt/0", _source.Address, Size);
        await reader.ReadAsync(other.Address, [new("ckpt/0", 0, 64, _other.Address)], Deadline, Ct);
        other.Worker.Pause(_release.Task);
        var both = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        worker.GetsInFlight += () =>
        {
            if (worker.InFlight == 2 * (Size / UcxWorker.ChunkBytes))
            {
                both.TrySetResult();
            }
        };
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var fromOther = reader.ReadAsync(other.Address, [new("ckpt/0", 0, Size, _other.Address)], TimeSpan.FromMinutes(10), Ct);
        var fromOwner = reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromMinutes(10), cancel.Token);
        await both.Task.WaitAsync(Deadline, Ct); // Both owners' gets in flight on one worker, neither served.
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => fromOwner.WaitAsync(Deadline, Ct));
        var e = await Assert.ThrowsAsync<P2PException>(() => fromOther.WaitAsync(Deadline, Ct));
        Assert.Equal($"P2P read from {other.Address} stopped: this reader's UCX worker was reset after a read it could not cut off", e.Message);
        AssertRetired(worker);

        _release.SetResult();
        _other.AsSpan(0, Size).Clear();
        await reader.ReadAsync(other.Address, [new("ckpt/0", 0, Size, _other.Address)], Deadline, Ct);
        Assert.NotSame(worker, reader.Reader);
        Assert.True(_source.AsSpan(0, Size).SequenceEqual(_other.AsSpan(0, Size)));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("tcp")]
    public async Task Unregister_CuttingOffAStalledLease_DestroysTheWorkerThatServedIt_BeforeReturning_AndNothingPollsAfterIt(string? tls)
    {
        var (owner, reader, _, inFlight) = await HeldPair(tls);
        owner.Control.SendDeadline = TimeSpan.FromMilliseconds(200);
        var served = owner.Worker;
        var address = owner.Address;
        var read = reader.ReadAsync(address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromMinutes(10), Ct);
        await inFlight.WaitAsync(Deadline, Ct);
        Assert.Equal(1, served.Leases); // The owner polls for its reader meanwhile.

        // Its gets unserved, the lease outlives the send deadline: cut off, and the read fails naming its owner.
        var unregister = Task.Run(() => owner.Unregister("ckpt/0"), Ct);
        var e = await Assert.ThrowsAsync<P2PException>(() => read.WaitAsync(Deadline, Ct));
        Assert.Contains(address, e.Message);
        // Requests of that reader may still reach the served worker, which answers from bare addresses:
        // Unregister returns only once that worker is destroyed (it is held here, so it waits).
        Assert.False(unregister.IsCompleted);
        _release.SetResult();
        await unregister.WaitAsync(Deadline, Ct);
        Assert.NotSame(served, owner.Worker);
        Assert.Equal(0, served.Leases);
        Assert.Throws<ObjectDisposedException>(() => served.Map(_source.Address, 64)); // Its thread ended: no polling left behind.

        var sleeping = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        owner.Worker.Sleeping += () => sleeping.TrySetResult();
        await sleeping.Task.WaitAsync(Deadline, Ct); // The new worker idles on its descriptor.
        Assert.Equal(0, owner.Worker.Leases);

        // The other buffer, mapped again by the new worker, reads bit-exact; the unregistered one is refused.
        _other.AsSpan(0, Size).Clear();
        await reader.ReadAsync(address, [new("ckpt/1", 0, Size, _other.Address)], Deadline, Ct);
        Assert.True(_source.AsSpan(0, Size).SequenceEqual(_other.AsSpan(0, Size)));
        var refused = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync(address, [new("ckpt/0", 0, 64, _other.Address)], Deadline, Ct).WaitAsync(Deadline, Ct));
        Assert.Equal($"P2P read from {address} refused: no buffer 'ckpt/0' is registered here", refused.Message);
    }

    [Fact]
    public async Task Lease_HeldByAStalledReaderPastItsDeadline_IsDropped_AndTheOwnerStopsPollingForIt()
    {
        var owner = Store();
        owner.Register("ckpt/0", _source.Address, Size);
        owner.Control.SendDeadline = TimeSpan.FromMilliseconds(200);
        var reader = Store();
        // A reader that takes a lease for a read of 300 ms and then does nothing (a stopped process, say).
        using var lease = reader.Control.TakeLease(owner.Address, ["ckpt/0"], DateTime.UtcNow + TimeSpan.FromMilliseconds(300), Ct);
        Assert.Equal(1, owner.Worker.Leases); // Counted before the grant was sent: the owner polls for this reader now.
        var sleeping = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        owner.Worker.Sleeping += () => sleeping.TrySetResult();

        await sleeping.Task.WaitAsync(Deadline, Ct); // Polling as long as the lease is held: it sleeps only once it was dropped.
        Assert.Equal(0, owner.Worker.Leases);
        var e = Assert.Throws<P2PException>(() => lease.End(DateTime.UtcNow + Deadline, Ct));
        Assert.Equal($"P2P owner {owner.Address} closed the connection mid-read (did it exit?)", e.Message);
    }

    [Fact]
    public async Task Read_WhoseEndpointFails_OwnersWorkerGoneUnderUcxTcp_FailsNamingTheOwner_WithoutRetiring_AndReadsFromOthersWork()
    {
        var (owner, reader, worker, inFlight) = await HeldPair("tcp");
        var read = reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], TimeSpan.FromMinutes(10), Ct);
        await inFlight.WaitAsync(Deadline, Ct);
        // The owner's worker goes (its control connection stays): only UCX's endpoint can tell the reader.
        var served = owner.Worker;
        var told = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        served.StopRequested += () => told.TrySetResult();
        var gone = Task.Run(served.Dispose, Ct);
        await told.Task.WaitAsync(Deadline, Ct);
        _release.SetResult(); // Told to stop first, it serves none of the gets on its way out.
        await gone.WaitAsync(Deadline, Ct);

        var e = await Assert.ThrowsAsync<P2PException>(() => read.WaitAsync(Deadline, Ct));
        Assert.StartsWith($"P2P read from {owner.Address} failed: ", e.Message);
        Assert.EndsWith("(did the owner exit?)", e.Message);
        Assert.False(worker.Retired); // Failed gets completed: nothing to destroy the worker for.
        Assert.Equal(0, worker.InFlight);

        var other = Store("tcp");
        other.Register("ckpt/0", _source.Address, Size);
        _other.AsSpan(0, Size).Clear();
        await reader.ReadAsync(other.Address, [new("ckpt/0", 0, Size, _other.Address)], Deadline, Ct);
        Assert.Same(worker, reader.Reader);
        Assert.True(_source.AsSpan(0, Size).SequenceEqual(_other.AsSpan(0, Size)));
    }

    [Fact]
    public async Task Read_FromAnotherHost_WithNoUcxTransportThere_FailsAtOnceSayingWhatToChange_AndSameHostReadsWork()
    {
        P2PStores.RequireUcx();
        // As a rank makes it by default without an RDMA device: UCX's TCP transport off, so nothing reaches other hosts.
        var reader = P2PTransports.Create(P2PTransport.Ucx, IPAddress.Loopback, "secret", [], ucxTlsSet: false);
        _owned.Add(reader);
        var e = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync("192.0.2.1:9", [new("ckpt/0", 0, 64, _target.Address)], TimeSpan.FromMinutes(10), Ct)
            .WaitAsync(Deadline, Ct)); // Allowed 10 minutes, failed within the guard: at once, not at its deadline.
        Assert.StartsWith("P2P read from 192.0.2.1:9 over ucx: the owner is on another host", e.Message);
        Assert.Contains("--p2p-transport tcp", e.Message);
        Assert.Contains("UCX_TLS", e.Message);

        var owner = Store();
        owner.Register("ckpt/0", _source.Address, Size);
        await reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], Deadline, Ct);
        Assert.True(_source.AsSpan(0, Size).SequenceEqual(_target.AsSpan(0, Size)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Auto_WithoutAnRdmaDevice_NeverChoosesUcx(bool ucxTlsSet)
    {
        using var store = P2PTransports.Create(P2PTransport.Auto, IPAddress.Loopback, "secret", [], ucxTlsSet);
        Assert.Equal("tcp", store.Transport);
    }

    [Fact]
    public async Task LeaseRequest_WithoutTheHandshake_GetsNoWorkerAddressOrKey_JustTheClose()
    {
        var owner = Store();
        owner.Register("ckpt/0", _source.Address, Size);
        var colon = owner.Address.LastIndexOf(':');
        using var socket = await RawPeer.ConnectAsync(new IPEndPoint(IPAddress.Loopback, int.Parse(owner.Address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture)));
        await socket.SendAsync(new Writer().Int32(-1).Int32(1).String("ckpt/0").Int64(60_000).ToFrame(), Ct).AsTask().WaitAsync(Deadline, Ct);
        var got = new byte[64 << 10];
        var total = 0;
        try
        {
            int n;
            while ((n = await socket.ReceiveAsync(got.AsMemory(total), Ct).AsTask().WaitAsync(Deadline, Ct)) > 0)
            {
                total += n;
            }
        }
        catch (System.Net.Sockets.SocketException)
        {
        }
        Assert.Equal(0, total);
    }
}
