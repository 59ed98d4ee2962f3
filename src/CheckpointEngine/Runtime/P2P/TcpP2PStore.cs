using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using CheckpointEngine.Runtime.Rendezvous;
using CheckpointEngine.Runtime.Security;

namespace CheckpointEngine.Runtime.P2P;

/// <summary>
/// P2P reads over TCP. Each rank serves its registered buffers (the update path never takes part): a
/// request lists (buffer, offset, length) ranges, the reply is a status byte and then the raw bytes of
/// every range in order, sent straight from the registered memory. A read is striped over several
/// connections to its owner (<see cref="ConnectionsPerOwner"/>, kept open), each served by its own thread
/// there, so copies into and out of the kernel run side by side; receive buffers grow with the kernel's
/// autotuning (up to net.ipv4.tcp_rmem) instead of a fixed size. Every connection opens with the <see cref="Security.Handshake"/>, accepted asynchronously;
/// only an authenticated reader gets a thread of its own, and one that stops taking its reply for
/// <see cref="SendDeadline"/> is dropped.
/// </summary>
public sealed partial class TcpP2PStore : IP2PStore
{
    private const int PollMicroseconds = 100_000;
    private const int SocketBuffer = 4 << 20;

    /// <summary>The most one send call hands the socket: a reader must take this much per <see cref="SendDeadline"/>.</summary>
    private const int SendChunk = 4 << 20;

    /// <summary>A read smaller than this per connection is not striped further.</summary>
    private const long MinStripe = 8 << 20;

    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly ReaderWriterLockSlim _buffersLock = new();
    private readonly Dictionary<string, (nint Address, long Length)> _buffers = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, SemaphoreSlim> _connectionLocks = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Socket> _connections = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<Socket, string> _serving = new();
    private readonly ConcurrentDictionary<Socket, string> _answering = new();
    private volatile bool _disposed;

    public TcpP2PStore(IPAddress address, string? token)
        : this(address, token, null)
    {
    }

    /// <param name="remote">What leases hand out besides the buffers' places (a UCX store's worker address and remote keys); null: this store grants no leases.</param>
    internal TcpP2PStore(IPAddress address, string? token, IRemoteAccess? remote)
    {
        _remote = remote;
        Handshake = new Handshake(token, Handshake.P2P);
        _listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(address, 0));
        _listener.Listen(64);
        var ep = (IPEndPoint)_listener.LocalEndPoint!;
        Address = $"{ep.Address}:{ep.Port}";
        _ = AcceptLoopAsync();
    }

    public string Address { get; }

    public string Transport => "tcp";

    /// <summary>How readers and this store authenticate each other (its deadline, limit and log are settable for tests).</summary>
    internal Handshake Handshake { get; }

    /// <summary>
    /// How long a reader may take to accept each chunk of its reply before it is dropped (connection
    /// closed, logged naming it); also the longest <see cref="Unregister"/> waits for reads in flight.
    /// </summary>
    internal TimeSpan SendDeadline { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>The reading connections open now, to every owner.</summary>
    internal int OpenConnections => _connections.Count;

    /// <summary>Connections a read from one owner is striped over.</summary>
    internal int ConnectionsPerOwner { get; set; } = 4;

    public void Register(string name, nint address, long length)
    {
        _buffersLock.EnterWriteLock();
        try
        {
            if (!_buffers.TryAdd(name, (address, length)))
            {
                throw new InvalidOperationException($"P2P buffer '{name}' is already registered");
            }
        }
        finally
        {
            _buffersLock.ExitWriteLock();
        }
    }

    /// <summary>
    /// Removes a buffer once no read of registered memory is in flight; a read still in flight after
    /// <see cref="SendDeadline"/> is cut off (its reader dropped) rather than waited for.
    /// </summary>
    public void Unregister(string name)
    {
        var cut = !_buffersLock.TryEnterWriteLock(SendDeadline);
        if (cut)
        {
            foreach (var (socket, peer) in _answering)
            {
                Handshake.Logger.LogWarning("{Listener}: dropped the reader at {Peer}: its read was still in flight {Seconds:0.###} s after '{Checkpoint}' was to be unregistered",
                    Handshake.P2P, peer, SendDeadline.TotalSeconds, name);
                socket.Dispose();
            }
            _buffersLock.EnterWriteLock(); // Their sends fail at once now, and give the lock back.
        }
        try
        {
            if (cut)
            {
                _remote?.CutOff(name);
            }
            _buffers.Remove(name);
        }
        finally
        {
            _buffersLock.ExitWriteLock();
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            _ = AuthenticateAsync(socket);
        }
    }

    /// <summary>The handshake, without a thread of its own; an authenticated reader is then served on one.</summary>
    private async Task AuthenticateAsync(Socket socket)
    {
        var peer = socket.RemoteEndPoint?.ToString() ?? "an unknown address";
        _serving[socket] = peer;
        try
        {
            using (var stream = new NetworkStream(socket, ownsSocket: false))
            {
                // Readers need not be ranks of this world (a joining instance is not): any claim is admitted.
                if (await Handshake.AcceptAsync(stream, socket.RemoteEndPoint, _ => null, null, _stop.Token).ConfigureAwait(false) is not null && !_disposed)
                {
                    new Thread(() => Serve(socket, peer)) { IsBackground = true, Name = "p2p-serve" }.Start();
                    return;
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // Closed below.
        }
        _serving.TryRemove(socket, out _);
        socket.Dispose();
    }

    /// <summary>Serves one authenticated reader: requests until it hangs up, or stalls and is dropped.</summary>
    private void Serve(Socket socket, string peer)
    {
        try
        {
            using var stream = new NetworkStream(socket, ownsSocket: true);
            socket.NoDelay = true;
            socket.SendBufferSize = SocketBuffer;
            while (!_disposed && Frame(stream) is { } request)
            {
                if (request.Length >= 4 && BitConverter.ToInt32(request) == LeaseRequest)
                {
                    GrantLease(socket, stream, peer, request);
                }
                else
                {
                    Answer(socket, peer, request);
                }
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut)
        {
            Handshake.Logger.LogWarning("{Listener}: dropped the reader at {Peer}: it took no data for {Seconds:0.###} s (a stalled reader)", Handshake.P2P, peer, SendDeadline.TotalSeconds);
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException or ObjectDisposedException)
        {
            // The reader left or misbehaved; it gets an error on its side.
        }
        finally
        {
            _serving.TryRemove(socket, out _);
            socket.Dispose();
        }
    }

    private static byte[]? Frame(NetworkStream stream) => StoreProtocol.ReadFrameAsync(stream, CancellationToken.None).GetAwaiter().GetResult();

    private unsafe void Answer(Socket socket, string peer, byte[] request)
    {
        var reader = new StoreProtocol.Reader(request);
        var count = reader.Count(8);
        var ranges = new (string Name, long Offset, long Length)[count];
        for (var i = 0; i < count; i++)
        {
            ranges[i] = (reader.String(), reader.Int64(), reader.Int64());
        }
        socket.SendTimeout = (int)Math.Clamp(SendDeadline.TotalMilliseconds, 1, int.MaxValue);
        _buffersLock.EnterReadLock(); // Unregister waits until these bytes are sent, or the reader is dropped.
        _answering[socket] = peer;
        try
        {
            foreach (var (name, offset, length) in ranges)
            {
                var problem = !_buffers.TryGetValue(name, out var b) ? $"no buffer '{name}' is registered here"
                    : offset < 0 || length < 0 || offset > b.Length - length ? $"range [{offset}, +{length}) is outside buffer '{name}' ({b.Length} bytes)"
                    : null;
                if (problem is not null)
                {
                    socket.Send([1]);
                    socket.Send(new StoreProtocol.Writer().String(problem).ToFrame().Span);
                    return;
                }
            }
            socket.Send([0]);
            foreach (var (name, offset, length) in ranges)
            {
                var source = (byte*)_buffers[name].Address + offset;
                for (long sent = 0; sent < length;)
                {
                    sent += socket.Send(new ReadOnlySpan<byte>(source + sent, (int)Math.Min(length - sent, SendChunk)));
                }
            }
        }
        finally
        {
            _answering.TryRemove(socket, out _);
            _buffersLock.ExitReadLock();
        }
    }

    /// <summary>Reads every range, striped over up to <see cref="ConnectionsPerOwner"/> connections read at once; the first failure is raised.</summary>
    public Task ReadAsync(string owner, IReadOnlyList<P2PRead> reads, TimeSpan timeout, CancellationToken ct = default)
    {
        var stripes = Stripe(reads, ConnectionsPerOwner);
        return Task.WhenAll(stripes.Select((stripe, i) =>
            Task.Factory.StartNew(() => Read(owner, i, stripe, timeout, ct), ct, TaskCreationOptions.LongRunning, TaskScheduler.Default)));
    }

    /// <summary>Opens the <see cref="ConnectionsPerOwner"/> connections reads from <paramref name="owner"/> are striped over (those not open yet).</summary>
    public Task ConnectAsync(string owner, TimeSpan timeout, CancellationToken ct = default) =>
        Task.WhenAll(Enumerable.Range(0, ConnectionsPerOwner).Select(i => Task.Factory.StartNew(() =>
        {
            var key = $"{owner}#{i}";
            var gate = Acquire(owner, key, timeout, ct);
            try
            {
                if (!_connections.ContainsKey(key))
                {
                    Connect(owner, key, DateTime.UtcNow + timeout);
                }
            }
            finally
            {
                gate.Release();
            }
        }, ct, TaskCreationOptions.LongRunning, TaskScheduler.Default)));

    /// <summary>The reads cut into at most <paramref name="count"/> runs of about equal bytes (none below <see cref="MinStripe"/>), in order.</summary>
    internal static List<List<P2PRead>> Stripe(IReadOnlyList<P2PRead> reads, int count)
    {
        var total = reads.Sum(r => r.Length);
        var per = Math.Max(MinStripe, (total + count - 1) / Math.Max(1, count));
        var stripes = new List<List<P2PRead>> { new() };
        long filled = 0;
        foreach (var read in reads)
        {
            for (long at = 0; at < read.Length;) // Empty ranges need no bytes: left out.
            {
                if (filled == per)
                {
                    stripes.Add([]);
                    filled = 0;
                }
                var n = Math.Min(read.Length - at, per - filled);
                stripes[^1].Add(read with { Offset = read.Offset + at, Length = n, Destination = read.Destination + (nint)at });
                (at, filled) = (at + n, filled + n);
            }
        }
        return stripes;
    }

    /// <summary>The connection <paramref name="key"/> to <paramref name="owner"/>, held: one read (or connect) at a time on it.</summary>
    private SemaphoreSlim Acquire(string owner, string key, TimeSpan timeout, CancellationToken ct)
    {
        var gate = _connectionLocks.GetOrAdd(key, _ => new SemaphoreSlim(1, 1));
        return gate.Wait(timeout, ct) ? gate
            : throw new P2PException($"P2P read from {owner}: another read from it did not finish within {timeout.TotalSeconds:F0} s");
    }

    private unsafe void Read(string owner, int stripe, List<P2PRead> reads, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + timeout;
        var key = $"{owner}#{stripe}";
        var gate = Acquire(owner, key, timeout, ct);
        try
        {
            var socket = _connections.TryGetValue(key, out var s) ? s : Connect(owner, key, deadline);
            try
            {
                var request = new StoreProtocol.Writer().Int32(reads.Count);
                foreach (var r in reads)
                {
                    request.String(r.Buffer).Int64(r.Offset).Int64(r.Length);
                }
                socket.SendTimeout = Remaining(deadline);
                socket.Send(request.ToFrame().Span);
                var status = new byte[1];
                Receive(socket, status, deadline, owner, ct);
                if (status[0] != 0)
                {
                    var error = ReceiveFrame(socket, deadline, owner, ct);
                    throw new P2PException($"P2P read from {owner} refused: {new StoreProtocol.Reader(error).String()}");
                }
                foreach (var r in reads)
                {
                    for (long got = 0; got < r.Length;)
                    {
                        var n = (int)Math.Min(r.Length - got, 1 << 30);
                        Receive(socket, new Span<byte>((byte*)r.Destination + got, n), deadline, owner, ct);
                        got += n;
                    }
                }
            }
            catch (Exception e)
            {
                // Whatever went wrong, the connection's state is unknown now: never reuse it.
                if (_connections.TryRemove(key, out var broken))
                {
                    broken.Dispose();
                }
                if (e is P2PException or OperationCanceledException)
                {
                    throw;
                }
                throw new P2PException($"P2P read from {owner} failed: {e.Message}", e);
            }
        }
        finally
        {
            gate.Release();
        }
    }

    private Socket Connect(string owner, string key, DateTime deadline)
    {
        var colon = owner.LastIndexOf(':');
        if (colon <= 0 || !IPAddress.TryParse(owner[..colon], out var ip) || !int.TryParse(owner[(colon + 1)..], out var port))
        {
            throw new P2PException($"'{owner}' is not a P2P address (IP:port)");
        }
        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true }; // Receive buffer: autotuned.
        try
        {
            using (var cts = new CancellationTokenSource(Remaining(deadline)))
            {
                socket.ConnectAsync(ip, port, cts.Token).AsTask().GetAwaiter().GetResult();
            }
            using (var stream = new NetworkStream(socket, ownsSocket: false))
            using (var cts = new CancellationTokenSource(Remaining(deadline)))
            {
                Handshake.ConnectAsync(stream, new Handshake.Claim(-1), owner, cts.Token).GetAwaiter().GetResult();
            }
            _connections[key] = socket;
            return socket;
        }
        catch (HandshakeException e)
        {
            socket.Dispose();
            throw new P2PException(e.Message, e);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException or InvalidDataException)
        {
            socket.Dispose();
            throw new P2PException($"cannot connect to P2P owner {owner}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static byte[] ReceiveFrame(Socket socket, DateTime deadline, string owner, CancellationToken ct)
    {
        var prefix = new byte[4];
        Receive(socket, prefix, deadline, owner, ct);
        var length = BitConverter.ToInt32(prefix);
        if (length is < 1 or > 1 << 20)
        {
            throw new P2PException($"P2P owner {owner} sent a malformed reply (length {length})");
        }
        var payload = new byte[length];
        Receive(socket, payload, deadline, owner, ct);
        return payload;
    }

    /// <summary>Fills <paramref name="target"/>, polling so that the deadline and cancellation are seen while waiting.</summary>
    private static void Receive(Socket socket, Span<byte> target, DateTime deadline, string owner, CancellationToken ct)
    {
        while (!target.IsEmpty)
        {
            ct.ThrowIfCancellationRequested();
            if (DateTime.UtcNow > deadline)
            {
                throw new P2PException($"P2P owner {owner} did not send its data within the deadline");
            }
            if (!socket.Poll(PollMicroseconds, SelectMode.SelectRead))
            {
                continue;
            }
            var n = socket.Receive(target);
            if (n == 0)
            {
                throw new P2PException($"P2P owner {owner} closed the connection mid-read (did it exit?)");
            }
            target = target[n..];
        }
    }

    private static int Remaining(DateTime deadline) => (int)Math.Clamp((deadline - DateTime.UtcNow).TotalMilliseconds, 1, int.MaxValue);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _stop.Cancel();
        _listener.Dispose();
        foreach (var s in _connections.Values)
        {
            s.Dispose();
        }
        foreach (var s in _serving.Keys)
        {
            s.Dispose();
        }
        _buffersLock.EnterWriteLock(); // No read of registered memory is in flight past this point.
        _buffers.Clear();
        _buffersLock.ExitWriteLock();
    }
}
