using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.P2P;
using CheckpointEngine.Runtime.Security;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>The TCP store's own cases (stalled readers); what every transport does is in <see cref="P2PStoreTests"/>.</summary>
public sealed class TcpP2PStoreTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);
    private readonly TcpP2PStore _owner = new(IPAddress.Loopback, "secret");
    private readonly TcpP2PStore _reader = new(IPAddress.Loopback, "secret");
    private readonly NativeBuffer _source = NativeBuffer.Allocate(3 << 20);
    private readonly NativeBuffer _target = NativeBuffer.Allocate(3 << 20);

    public TcpP2PStoreTests()
    {
        var bytes = _source.AsSpan(0, 3 << 20);
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 7 + (i >> 11));
        }
        _owner.Register("ckpt/0", _source.Address, 3 << 20);
    }

    public void Dispose()
    {
        _reader.Dispose();
        _owner.Dispose();
        _source.Dispose();
        _target.Dispose();
    }

    [Fact]
    public async Task Read_StripedOverSeveralConnections_LandsBitExact()
    {
        const int Size = 40 << 20;
        using var source = NativeBuffer.Allocate(Size);
        using var target = NativeBuffer.Allocate(Size);
        var bytes = source.AsSpan(0, Size);
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 13 + (i >> 13));
        }
        _owner.Register("big/0", source.Address, Size);
        P2PRead[] reads = [new("big/0", 0, 17 << 20, target.Address), new("big/0", 17 << 20, 3, target.Address + (17 << 20)), new("big/0", (17 << 20) + 3, Size - (17 << 20) - 3, target.Address + (17 << 20) + 3)];
        Assert.Equal(4, TcpP2PStore.Stripe(reads, 4).Count);
        await _reader.ReadAsync(_owner.Address, reads, Deadline, TestContext.Current.CancellationToken);
        Assert.True(source.AsSpan(0, Size).SequenceEqual(target.AsSpan(0, Size)));
    }

    [Fact]
    public async Task Connect_OpensTheStripesConnectionsOnce_TheReadAfterUsesThem_NobodyListening_NamesTheOwner()
    {
        await _reader.ConnectAsync(_owner.Address, Deadline, TestContext.Current.CancellationToken);
        Assert.Equal(4, _reader.OpenConnections);
        await _reader.ConnectAsync(_owner.Address, Deadline, TestContext.Current.CancellationToken);
        Assert.Equal(4, _reader.OpenConnections); // Open already: none more.
        await _reader.ReadAsync(_owner.Address, [new("ckpt/0", 0, 3 << 20, _target.Address)], Deadline, TestContext.Current.CancellationToken);
        Assert.True(_source.AsSpan(0, 3 << 20).SequenceEqual(_target.AsSpan(0, 3 << 20)));
        Assert.Equal(4, _reader.OpenConnections);

        using var closed = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closed.Bind(new IPEndPoint(IPAddress.Loopback, 0)); // Bound, not listening: connections are refused.
        var nobody = closed.LocalEndPoint!.ToString()!;
        var error = await Assert.ThrowsAsync<P2PException>(() => _reader.ConnectAsync(nobody, Deadline, TestContext.Current.CancellationToken));
        Assert.Contains($"cannot connect to P2P owner {nobody}", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Stripe_CutsIntoAboutEqualRunsInOrder_NoneTooSmall()
    {
        P2PRead[] reads = [new("a", 100, 30 << 20, 1000), new("b", 0, 10 << 20, 1 << 40)];
        var stripes = TcpP2PStore.Stripe(reads, 4);
        Assert.Equal([10 << 20, 10 << 20, 10 << 20, 10 << 20], stripes.Select(s => s.Sum(r => r.Length)));
        Assert.Equal(new P2PRead("a", 100 + (20 << 20), 10 << 20, 1000 + (20 << 20)), Assert.Single(stripes[2]));
        Assert.Equal(reads[1], Assert.Single(stripes[3]));
        P2PRead[] small = [new("a", 0, 5 << 20, 0), new("b", 0, 1, 0)];
        Assert.Equal(small, Assert.Single(TcpP2PStore.Stripe(small, 4))); // Under 8 MiB: one connection.
    }

    [Fact]
    public async Task StalledReader_IsDroppedAtTheSendDeadline_NamingIt()
    {
        var log = new LogLines();
        _owner.Handshake.Logger = log;
        _owner.SendDeadline = TimeSpan.FromMilliseconds(500);
        using var big = NativeBuffer.Allocate(55 << 20);
        _owner.Register("big", big.Address, 55 << 20);
        using var stalled = await StalledReaderAsync("big", 55 << 20);
        // Dropped after half a second without progress; ten seconds is where the test calls it a hang.
        var line = await log.WaitForAsync(Deadline, $"P2P store: dropped the reader at {stalled.LocalEndPoint}: it took no data for 0.5 s");
        Assert.True(await RawPeer.ClosedByServerAsync(stalled, Deadline), line);
        await _reader.ReadAsync(_owner.Address, [new("ckpt/0", 0, 64, _target.Address)], Deadline, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task StalledReader_DoesNotHoldUnregisterPastTheSendDeadline()
    {
        // The reported hang: a reader asks for 55 MB and stops reading while the owner unregisters the checkpoint.
        var log = new LogLines();
        _owner.Handshake.Logger = log;
        _owner.SendDeadline = TimeSpan.FromSeconds(1);
        using var big = NativeBuffer.Allocate(55 << 20);
        _owner.Register("big", big.Address, 55 << 20);
        using var stalled = await StalledReaderAsync("big", 55 << 20);
        await Task.Run(() => _owner.Unregister("big"), TestContext.Current.CancellationToken).WaitAsync(Deadline, TestContext.Current.CancellationToken);
        await log.WaitForAsync(Deadline, $"P2P store: dropped the reader at {stalled.LocalEndPoint}");
        Assert.True(await RawPeer.ClosedByServerAsync(stalled, Deadline));
        var e = await Assert.ThrowsAsync<P2PException>(() => _reader.ReadAsync(_owner.Address, [new("big", 0, 1, _target.Address)], Deadline, TestContext.Current.CancellationToken));
        Assert.Contains("no buffer 'big'", e.Message);
    }

    /// <summary>An authenticated reader that requests <paramref name="length"/> bytes, takes the status byte (the owner is sending now) and stops reading.</summary>
    private async Task<Socket> StalledReaderAsync(string buffer, long length)
    {
        var ct = TestContext.Current.CancellationToken;
        var colon = _owner.Address.LastIndexOf(':');
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 64 << 10 };
        await socket.ConnectAsync(IPAddress.Parse(_owner.Address[..colon]), int.Parse(_owner.Address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture), ct);
        var stream = new NetworkStream(socket);
        await new Handshake("secret", Handshake.P2P).ConnectAsync(stream, new Handshake.Claim(-1), _owner.Address, ct).WaitAsync(Deadline, ct);
        await stream.WriteAsync(new Writer().Int32(1).String(buffer).Int64(0).Int64(length).ToFrame(), ct);
        var status = new byte[1];
        await stream.ReadExactlyAsync(status, ct).AsTask().WaitAsync(Deadline, ct);
        Assert.Equal(0, status[0]);
        return socket;
    }
}
