using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Runtime.Security;
using CheckpointEngine.Tests.Support;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>What every P2P transport does alike, run once per transport (TCP, UCX over shared memory and CMA here).</summary>
public sealed class P2PStoreTests : IDisposable
{
    private const int Size = 24 << 20; // Larger than a UCX get chunk: reads are cut and many are in flight.
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);
    private readonly List<IDisposable> _owned = [];
    private readonly NativeBuffer _source = NativeBuffer.Allocate(Size);
    private readonly NativeBuffer _target = NativeBuffer.Allocate(Size);

    public P2PStoreTests()
    {
        var bytes = _source.AsSpan(0, Size);
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 7 + (i >> 11));
        }
    }

    public void Dispose()
    {
        foreach (var d in Enumerable.Reverse(_owned))
        {
            d.Dispose();
        }
        _source.Dispose();
        _target.Dispose();
    }

    private IP2PStore Store(string transport, string token = "secret")
    {
        var store = P2PStores.Create(transport, token);
        _owned.Add(store);
        return store;
    }

    private (IP2PStore Owner, IP2PStore Reader) Pair(string transport)
    {
        var owner = Store(transport);
        owner.Register("ckpt/0", _source.Address, Size);
        return (owner, Store(transport));
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Read_BatchedRanges_LandBitExact(string transport)
    {
        var (owner, reader) = Pair(transport);
        Assert.Equal(transport, reader.Transport);
        P2PRead[] reads = [new("ckpt/0", 0, 1000, _target.Address), new("ckpt/0", 2 << 20, 1 << 20, _target.Address + 4096), new("ckpt/0", 5, 0, _target.Address),
            new("ckpt/0", 3 << 20, 20 << 20, _target.Address + (4 << 20))];
        for (var round = 0; round < 2; round++) // The second batch reuses the connection (and the UCX endpoint).
        {
            _target.AsSpan(0, Size).Clear();
            await reader.ReadAsync(owner.Address, reads, Deadline, Ct);
            Assert.True(_source.AsSpan(0, 1000).SequenceEqual(_target.AsSpan(0, 1000)));
            Assert.True(_source.AsSpan(2 << 20, 1 << 20).SequenceEqual(_target.AsSpan(4096, 1 << 20)));
            Assert.True(_source.AsSpan(3 << 20, 20 << 20).SequenceEqual(_target.AsSpan(4 << 20, 20 << 20)));
        }
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Read_UnknownBufferOrBadRange_IsRefusedByName_AndTheConnectionStaysUsable(string transport)
    {
        var (owner, reader) = Pair(transport);
        var e = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync(owner.Address, [new("ckpt/9", 0, 1, _target.Address)], Deadline, Ct));
        Assert.Contains("no buffer 'ckpt/9'", e.Message);
        e = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync(owner.Address, [new("ckpt/0", Size - 1, 2, _target.Address)], Deadline, Ct));
        Assert.Contains("outside buffer 'ckpt/0'", e.Message);
        await reader.ReadAsync(owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct);
        Assert.True(_source.AsSpan(0, 64).SequenceEqual(_target.AsSpan(0, 64)));
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Read_WrongToken_IsRefused(string transport)
    {
        var (owner, _) = Pair(transport);
        var stranger = Store(transport, "guess");
        var e = await Assert.ThrowsAsync<P2PException>(() => stranger.ReadAsync(owner.Address, [new("ckpt/0", 0, 1, _target.Address)], Deadline, Ct));
        Assert.Contains("wrong token", e.Message);
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Read_OwnerGone_FailsFastNamingIt(string transport)
    {
        var (owner, reader) = Pair(transport);
        var address = owner.Address;
        await reader.ReadAsync(address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct); // Connected (and, over UCX, an endpoint made).
        owner.Dispose();
        // A read allowed 10 minutes that fails within the hang guard: failed fast.
        var e = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync(address, [new("ckpt/0", 0, 1, _target.Address)], TimeSpan.FromMinutes(10), Ct)
            .WaitAsync(Deadline, Ct));
        Assert.Contains(address, e.Message);
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public void Register_Twice_IsRefused(string transport)
    {
        var (owner, _) = Pair(transport);
        Assert.Throws<InvalidOperationException>(() => owner.Register("ckpt/0", _source.Address, 1));
    }

    [Theory]
    [MemberData(nameof(P2PStores.Transports), MemberType = typeof(P2PStores))]
    public async Task Unregister_ThenRead_IsRefusedByName(string transport)
    {
        var (owner, reader) = Pair(transport);
        await reader.ReadAsync(owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct);
        owner.Unregister("ckpt/0");
        var e = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync(owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct));
        Assert.Contains("no buffer 'ckpt/0'", e.Message);
    }

    [Fact]
    public async Task TcpReader_ReadsFromAUcxOwner()
    {
        var owner = Store(P2PStores.Ucx);
        owner.Register("ckpt/0", _source.Address, Size);
        var reader = Store(P2PStores.Tcp);
        await reader.ReadAsync(owner.Address, [new("ckpt/0", 0, Size, _target.Address)], Deadline, Ct);
        Assert.True(_source.AsSpan(0, Size).SequenceEqual(_target.AsSpan(0, Size)));
    }

    [Fact]
    public async Task UcxReader_FromATcpOwner_IsRefusedNamingTheTransport_AndTcpReadsStillWork()
    {
        var owner = Store(P2PStores.Tcp);
        owner.Register("ckpt/0", _source.Address, Size);
        var reader = (UcxP2PStore)Store(P2PStores.Ucx);
        var e = await Assert.ThrowsAsync<P2PException>(() => reader.ReadAsync(owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct));
        Assert.Contains("runs the tcp P2P transport", e.Message);
        await reader.Tcp.ReadAsync(owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, Ct);
        Assert.True(_source.AsSpan(0, 64).SequenceEqual(_target.AsSpan(0, 64)));
    }

    [Fact]
    public async Task StalledLease_DoesNotHoldUnregisterPastTheSendDeadline_AndItsReaderLearnsOfIt()
    {
        // A reader that took a lease (and with it the remote key) and never ends it: the owner cuts it off.
        var owner = (UcxP2PStore)Store(P2PStores.Ucx);
        owner.Register("ckpt/0", _source.Address, Size);
        var log = new LogLines();
        owner.Control.Handshake.Logger = log;
        owner.Control.SendDeadline = TimeSpan.FromSeconds(1);
        var colon = owner.Address.LastIndexOf(':');
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(IPAddress.Loopback, int.Parse(owner.Address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture), Ct);
        var stream = new NetworkStream(socket);
        await new Handshake("secret", Handshake.P2P).ConnectAsync(stream, new Handshake.Claim(-1), owner.Address, Ct).WaitAsync(Deadline, Ct);
        await stream.WriteAsync(new Writer().Int32(-1).Int32(1).String("ckpt/0").Int64(60_000).ToFrame(), Ct); // For a read of a minute.
        var status = new byte[1];
        await stream.ReadExactlyAsync(status, Ct).AsTask().WaitAsync(Deadline, Ct);
        Assert.Equal(0, status[0]);
        var grant = await ReadFrameAsync(stream, Ct).WaitAsync(Deadline, Ct);
        Assert.NotNull(grant);

        await Task.Run(() => owner.Unregister("ckpt/0"), Ct).WaitAsync(Deadline, Ct);
        await log.WaitForAsync(Deadline, $"P2P store: dropped the reader at {socket.LocalEndPoint}");
        Assert.True(await RawPeer.ClosedByServerAsync(socket, Deadline)); // Ending the lease now fails: the reader discards what it read.
    }
}
