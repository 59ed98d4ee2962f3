using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Runtime.Security;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>
/// A connection to the rendezvous store. Calls on one client are serialized; each has a deadline,
/// and a connection that missed one is closed (its protocol state is unknown) so later calls fail
/// at once instead of reading someone else's reply.
/// </summary>
public sealed class StoreClient : IStore, IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly string _where;
    private string? _broken;

    private StoreClient(Socket socket, string where)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _where = where;
    }

    /// <summary>How long a call that does not wait may take before the store counts as unresponsive.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Connects to the store, retrying while it is not up yet (rank 0 may start later), and
    /// authenticates with the token (see <see cref="Handshake"/>) as this process's rank (−1 for a tool
    /// that is not a rank). A refusal (wrong token, rank taken or out of range) is not retried.
    /// </summary>
    public static Task<StoreClient> ConnectAsync(string host, int port, string? token, int rank, TimeSpan connectTimeout, CancellationToken ct = default) =>
        ConnectAsync(host, port, token, rank, connectTimeout, retrying: null, ct);

    /// <param name="retrying">Called with each failed attempt before the client waits to try again (tests await it instead of sleeping).</param>
    internal static async Task<StoreClient> ConnectAsync(string host, int port, string? token, int rank, TimeSpan connectTimeout,
        Action<Exception>? retrying, CancellationToken ct)
    {
        var where = $"{host}:{port} (rank 0)";
        var deadline = DateTime.UtcNow + connectTimeout;
        var delay = TimeSpan.FromMilliseconds(20);
        Exception? last = null;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                using var attempt = CancellationTokenSource.CreateLinkedTokenSource(ct);
                attempt.CancelAfter(Remaining(deadline, TimeSpan.FromSeconds(5)));
                var addresses = IPAddress.TryParse(host, out var ip) ? [ip] : await Dns.GetHostAddressesAsync(host, attempt.Token).ConfigureAwait(false);
                await socket.ConnectAsync(addresses, port, attempt.Token).ConfigureAwait(false);
                var client = new StoreClient(socket, where);
                try
                {
                    using var hello = CancellationTokenSource.CreateLinkedTokenSource(ct);
                    hello.CancelAfter(Remaining(deadline, TimeSpan.FromSeconds(10)));
                    await new Handshake(token, Handshake.Store).ConnectAsync(client._stream, new Handshake.Claim(rank), where, hello.Token).ConfigureAwait(false);
                    return client;
                }
                catch (Exception e) when (e is HandshakeException or InvalidDataException)
                {
                    client.Dispose();
                    throw new RendezvousException(e is HandshakeException ? e.Message : $"the rendezvous store at {where} broke the handshake: {e.Message}", e);
                }
                catch
                {
                    client.Dispose();
                    throw;
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException && !ct.IsCancellationRequested)
            {
                socket.Dispose();
                last = e;
            }
            if (DateTime.UtcNow >= deadline)
            {
                throw new RendezvousException(
                    $"cannot reach the rendezvous store at {where} within {connectTimeout.TotalSeconds:F0} s: {last?.Message}", last);
            }
            retrying?.Invoke(last!);
            await Task.Delay(delay, ct).ConfigureAwait(false);
            delay = TimeSpan.FromMilliseconds(Math.Min(500, delay.TotalMilliseconds * 2));
        }
    }

    /// <summary>A wait as the store takes it: whole milliseconds in [0, int.MaxValue] (negative is no wait; beyond ~24 days is capped).</summary>
    private static long WaitMs(TimeSpan wait) => (long)Math.Clamp(wait.TotalMilliseconds, 0, int.MaxValue);

    /// <summary>How long a waiting call may take: the wait plus the request timeout, without overflowing a timer.</summary>
    private TimeSpan ReplyTimeout(TimeSpan wait) => TimeSpan.FromMilliseconds(WaitMs(wait) + Math.Clamp((long)RequestTimeout.TotalMilliseconds, 1, int.MaxValue));

    private static TimeSpan Remaining(DateTime deadline, TimeSpan cap)
    {
        var left = deadline - DateTime.UtcNow;
        return left < TimeSpan.FromMilliseconds(50) ? TimeSpan.FromMilliseconds(50) : left < cap ? left : cap;
    }

    public async Task SetAsync(string key, byte[] value, CancellationToken ct = default) =>
        ExpectOk(await CallAsync(new Writer().Byte((byte)Op.Set).String(key).Bytes(value), RequestTimeout, $"set '{key}'", ct).ConfigureAwait(false), $"set '{key}'");

    public async Task<byte[]?> GetAsync(string key, CancellationToken ct = default)
    {
        var reply = await CallAsync(new Writer().Byte((byte)Op.Get).String(key), RequestTimeout, $"get '{key}'", ct).ConfigureAwait(false);
        var r = new Reader(reply);
        return (Status)r.Byte() switch
        {
            Status.Ok => r.Bytes(),
            Status.NotFound => null,
            _ => throw Unexpected(reply, $"get '{key}'"),
        };
    }

    public Task<byte[][]> WaitGetAsync(IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default) =>
        WaitForAsync(new Writer().Byte((byte)Op.WaitGet), keys, timeout, keys.Count == 1 ? $"wait for '{keys[0]}'" : $"wait for {keys.Count} keys", ct);

    /// <summary>
    /// One member's turn of an all-gather, in one round trip: sets <paramref name="key"/>, waits for every one of <paramref name="keys"/>
    /// (as <see cref="WaitGetAsync"/>), and once they are all there deletes <paramref name="drop"/> (this member's key of the previous
    /// call, which every member has read once all have set theirs of this one).
    /// </summary>
    public Task<byte[][]> GatherAsync(string key, byte[] value, string? drop, IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default) =>
        WaitForAsync(new Writer().Byte((byte)Op.Gather).String(key).Bytes(value).String(drop ?? ""), keys, timeout, $"gather of {keys.Count} keys (set '{key}')", ct);

    private async Task<byte[][]> WaitForAsync(Writer request, IReadOnlyList<string> keys, TimeSpan timeout, string what, CancellationToken ct)
    {
        request.Int32(keys.Count);
        foreach (var k in keys)
        {
            request.String(k);
        }
        request.Int64(WaitMs(timeout));
        var reply = await CallAsync(request, ReplyTimeout(timeout), what, ct).ConfigureAwait(false);
        var r = new Reader(reply);
        switch ((Status)r.Byte())
        {
            case Status.Ok:
                var values = new byte[r.Count(4)][];
                for (var i = 0; i < values.Length; i++)
                {
                    values[i] = r.Bytes();
                }
                return values;
            case Status.Timeout:
                var missing = new string[r.Count(4)];
                for (var i = 0; i < missing.Length; i++)
                {
                    missing[i] = r.String();
                }
                throw new StoreTimeoutException($"{what}: {missing.Length} keys still missing after {timeout.TotalSeconds:F1} s (first: '{missing.FirstOrDefault()}')", missing);
            default:
                throw Unexpected(reply, what);
        }
    }

    public async Task<long> AddAsync(string key, long delta, CancellationToken ct = default)
    {
        var reply = await CallAsync(new Writer().Byte((byte)Op.Add).String(key).Int64(delta), RequestTimeout, $"add '{key}'", ct).ConfigureAwait(false);
        var r = new Reader(reply);
        return (Status)r.Byte() == Status.Ok ? r.Int64() : throw Unexpected(reply, $"add '{key}'");
    }

    public async Task<(bool Swapped, byte[]? Current)> CompareAndSetAsync(string key, byte[]? expected, byte[] desired, CancellationToken ct = default)
    {
        var request = new Writer().Byte((byte)Op.CompareAndSet).String(key).Byte(expected is null ? (byte)0 : (byte)1).Bytes(expected ?? []).Bytes(desired);
        var reply = await CallAsync(request, RequestTimeout, $"compare-and-set '{key}'", ct).ConfigureAwait(false);
        var r = new Reader(reply);
        if ((Status)r.Byte() != Status.Ok)
        {
            throw Unexpected(reply, $"compare-and-set '{key}'");
        }
        var swapped = r.Byte() != 0;
        var has = r.Byte() != 0;
        var current = r.Bytes();
        return (swapped, has ? current : null);
    }

    public async Task<bool> DeleteAsync(string key, CancellationToken ct = default)
    {
        var reply = await CallAsync(new Writer().Byte((byte)Op.Delete).String(key), RequestTimeout, $"delete '{key}'", ct).ConfigureAwait(false);
        var r = new Reader(reply);
        return (Status)r.Byte() == Status.Ok ? r.Byte() != 0 : throw Unexpected(reply, $"delete '{key}'");
    }

    public async Task<int> DeletePrefixAsync(string prefix, CancellationToken ct = default)
    {
        var reply = await CallAsync(new Writer().Byte((byte)Op.DeletePrefix).String(prefix), RequestTimeout, $"delete prefix '{prefix}'", ct).ConfigureAwait(false);
        var r = new Reader(reply);
        return (Status)r.Byte() == Status.Ok ? r.Int32() : throw Unexpected(reply, $"delete prefix '{prefix}'");
    }

    /// <summary>Long-polls for the death of any rank: returns it, or null when <paramref name="timeout"/> passes first.</summary>
    public async Task<PeerDiedException?> WatchDeadAsync(TimeSpan timeout, CancellationToken ct = default)
    {
        var reply = await CallAsync(new Writer().Byte((byte)Op.WatchDead).Int64(WaitMs(timeout)), ReplyTimeout(timeout), "watch for dead ranks", ct).ConfigureAwait(false);
        var r = new Reader(reply);
        return (Status)r.Byte() switch
        {
            Status.Timeout => null,
            Status.PeerDead => new PeerDiedException(r.Int32(), r.String()),
            _ => throw Unexpected(reply, "watch for dead ranks"),
        };
    }

    public IStore WithPrefix(string prefix) => new PrefixStore(this, prefix);

    /// <summary>Tells the store this rank leaves on purpose (so it is not reported dead), then closes.</summary>
    public async Task ByeAsync()
    {
        try
        {
            await CallAsync(new Writer().Byte((byte)Op.Bye), TimeSpan.FromSeconds(2), "bye", CancellationToken.None).ConfigureAwait(false);
        }
        catch (RendezvousException)
        {
            // Leaving anyway.
        }
        Dispose();
    }

    private async Task<byte[]> CallAsync(Writer request, TimeSpan timeout, string what, CancellationToken ct)
    {
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_broken is not null)
            {
                throw new RendezvousException($"{what}: the connection to the rendezvous store at {_where} is unusable ({_broken})");
            }
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(timeout);
            try
            {
                await _stream.WriteAsync(request.ToFrame(), cts.Token).ConfigureAwait(false);
                return await ReadFrameAsync(_stream, cts.Token).ConfigureAwait(false)
                    ?? throw new IOException("the store closed the connection");
            }
            catch (Exception e) when (e is IOException or SocketException or InvalidDataException or OperationCanceledException or ObjectDisposedException)
            {
                _broken = e is OperationCanceledException && !ct.IsCancellationRequested ? $"no reply within {timeout.TotalSeconds:F0} s" : e.Message;
                _socket.Dispose();
                if (ct.IsCancellationRequested)
                {
                    throw;
                }
                throw new RendezvousException($"{what}: rendezvous store at {_where}: {_broken}", e);
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    private void ExpectOk(byte[] reply, string what)
    {
        if ((Status)reply[0] != Status.Ok)
        {
            throw Unexpected(reply, what);
        }
    }

    private RendezvousException Unexpected(byte[] reply, string what)
    {
        var r = new Reader(reply);
        return (Status)r.Byte() switch
        {
            Status.Error => new RendezvousException($"{what}: the rendezvous store at {_where} says: {r.String()}"),
            Status.PeerDead => new PeerDiedException(r.Int32(), r.String()),
            var s => new RendezvousException($"{what}: unexpected reply {s} from the rendezvous store at {_where}"),
        };
    }

    public void Dispose()
    {
        _broken ??= "closed";
        _stream.Dispose();
    }
}
