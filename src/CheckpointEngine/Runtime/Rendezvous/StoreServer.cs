using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Runtime.Security;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>
/// The rendezvous key-value store that rank 0 hosts. Besides keys it tracks which ranks are
/// connected: a rank whose connection drops without saying goodbye is dead, and from then on every
/// wait fails at once naming it, so survivors never sit out a deadline for a peer that is gone.
/// Every connection opens with the <see cref="Security.Handshake"/>; only then does the store read a
/// request or count the peer as a rank.
/// </summary>
public sealed class StoreServer : IDisposable
{
    private readonly Socket _listener;
    private readonly int _worldSize;
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _lock = new();
    private readonly Dictionary<string, byte[]> _data = new(StringComparer.Ordinal);
    private readonly List<(HashSet<string> Keys, TaskCompletionSource Done)> _waiters = [];
    private readonly HashSet<int> _members = [];
    private readonly HashSet<Socket> _connections = [];
    private readonly TaskCompletionSource _death = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private (int Rank, string Reason)? _dead;
    private int _watchers;

    private StoreServer(Socket listener, string? token, int worldSize)
    {
        _listener = listener;
        _worldSize = worldSize;
        Handshake = new Handshake(token, Handshake.Store);
        Endpoint = (IPEndPoint)listener.LocalEndPoint!;
        _ = AcceptLoopAsync();
    }

    /// <summary>The address the store listens on (port resolved when 0 was asked).</summary>
    public IPEndPoint Endpoint { get; }

    /// <summary>How peers authenticate (its deadline and limit are settable for tests).</summary>
    internal Handshake Handshake { get; }

    /// <summary>
    /// Listens on <paramref name="address"/> only (never on all interfaces unless asked with 0.0.0.0),
    /// for the ranks 0..<paramref name="worldSize"/>−1 (one connection each) and any number of tools (rank −1).
    /// </summary>
    public static StoreServer Start(IPAddress address, int port, string? token, int worldSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        var listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(new IPEndPoint(address, port));
            listener.Listen(512);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new RendezvousException($"cannot listen on {address}:{port} for the rendezvous store: {e.Message}");
        }
        return new StoreServer(listener, token, worldSize);
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
            socket.NoDelay = true;
            lock (_lock)
            {
                _connections.Add(socket);
            }
            _ = ServeAsync(socket);
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        int? rank = null;
        var graceful = false;
        await using var stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            if (await Handshake.AcceptAsync(stream, socket.RemoteEndPoint, Admit, Unadmit, _stop.Token).ConfigureAwait(false) is not { } claim)
            {
                return;
            }
            rank = claim.Rank;
            while (!_stop.IsCancellationRequested)
            {
                var frame = await ReadFrameAsync(stream, _stop.Token).ConfigureAwait(false);
                if (frame is null)
                {
                    break;
                }
                var (reply, bye) = await HandleAsync(frame).ConfigureAwait(false);
                await stream.WriteAsync(reply.ToFrame(), _stop.Token).ConfigureAwait(false);
                if (bye)
                {
                    graceful = true;
                    break;
                }
            }
        }
        catch (Exception)
        {
            // A broken or misbehaving connection ends here, whatever it sent (nothing escapes as an
            // unobserved task exception); a member's loss is recorded below.
        }
        finally
        {
            lock (_lock)
            {
                _connections.Remove(socket);
                if (rank is { } r && r >= 0)
                {
                    _members.Remove(r);
                }
            }
            if (rank >= 0)
            {
                Changed?.Invoke();
            }
            if (rank is { } r2 && r2 >= 0 && !graceful && !_stop.IsCancellationRequested)
            {
                MarkDead(r2, "its connection to the rendezvous store closed (process exited or was killed)");
            }
        }
    }

    /// <summary>
    /// Takes the slot of an authenticated peer's rank: −1 (a tool or a watcher, any number of them) or
    /// one of the world's ranks, once. Anything else is refused, so no claim can later mark the world broken.
    /// </summary>
    private string? Admit(Handshake.Claim claim)
    {
        var rank = claim.Rank;
        if (rank == -1)
        {
            return null;
        }
        if (rank < 0 || rank >= _worldSize)
        {
            return $"rank {rank} is outside [0, {_worldSize}) (WORLD_SIZE={_worldSize}; tools connect as -1)";
        }
        lock (_lock)
        {
            return _members.Add(rank) ? null : $"rank {rank} is already connected to the rendezvous store (two processes with RANK={rank}?)";
        }
    }

    /// <summary>The rank never learned it joined: free its slot so it can connect again (it is not dead, it never arrived).</summary>
    private void Unadmit(Handshake.Claim claim)
    {
        if (claim.Rank >= 0)
        {
            lock (_lock)
            {
                _members.Remove(claim.Rank);
            }
        }
    }

    private async Task<(Writer Reply, bool Bye)> HandleAsync(byte[] frame)
    {
        var reader = new Reader(frame);
        var op = (Op)reader.Byte();
        switch (op)
        {
            case Op.Set:
            {
                var key = reader.String();
                Put(key, reader.Bytes());
                return (Ok(), false);
            }
            case Op.Get:
            {
                var key = reader.String();
                lock (_lock)
                {
                    return (_data.TryGetValue(key, out var v) ? Ok().Bytes(v) : new Writer().Byte((byte)Status.NotFound), false);
                }
            }
            case Op.WaitGet:
            {
                var keys = new string[reader.Count(4)];
                for (var i = 0; i < keys.Length; i++)
                {
                    keys[i] = reader.String();
                }
                var timeout = WaitTime(reader.Int64());
                return (await WaitGetAsync(keys, timeout).ConfigureAwait(false), false);
            }
            case Op.Gather:
            {
                var key = reader.String();
                Put(key, reader.Bytes());
                var drop = reader.String();
                var keys = new string[reader.Count(4)];
                for (var i = 0; i < keys.Length; i++)
                {
                    keys[i] = reader.String();
                }
                // Once every member has set its key of this call, every member is past the previous one: its key there is read.
                return (await WaitGetAsync(keys, WaitTime(reader.Int64()), drop.Length > 0 ? drop : null).ConfigureAwait(false), false);
            }
            case Op.Add:
            {
                var key = reader.String();
                var delta = reader.Int64();
                return (Add(key, delta), false);
            }
            case Op.CompareAndSet:
            {
                var key = reader.String();
                var hasExpected = reader.Byte() != 0;
                var expected = reader.Bytes();
                var desired = reader.Bytes();
                return (CompareAndSet(key, hasExpected ? expected : null, desired), false);
            }
            case Op.Delete:
            {
                var key = reader.String();
                lock (_lock)
                {
                    return (Ok().Byte(_data.Remove(key) ? (byte)1 : (byte)0), false);
                }
            }
            case Op.DeletePrefix:
            {
                var prefix = reader.String();
                lock (_lock)
                {
                    var doomed = _data.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList();
                    doomed.ForEach(k => _data.Remove(k));
                    return (Ok().Int32(doomed.Count), false);
                }
            }
            case Op.WatchDead:
            {
                var timeout = WaitTime(reader.Int64());
                lock (_lock)
                {
                    _watchers++;
                }
                Changed?.Invoke();
                try
                {
                    await WaitAsync(_death.Task, timeout).ConfigureAwait(false);
                }
                finally
                {
                    lock (_lock)
                    {
                        _watchers--;
                    }
                }
                return (DeadReply() ?? new Writer().Byte((byte)Status.Timeout), false);
            }
            case Op.Bye:
                return (Ok(), true);
            default:
                return (new Writer().Byte((byte)Status.Error).String($"unknown op {(byte)op}"), false);
        }
    }

    private static Writer Ok() => new Writer().Byte((byte)Status.Ok);

    /// <summary>A client's wait in milliseconds, clamped to what a timer takes (a negative or huge one must not end the connection).</summary>
    private static TimeSpan WaitTime(long ms) => TimeSpan.FromMilliseconds(Math.Clamp(ms, 0, int.MaxValue));

    /// <summary>Waits for <paramref name="task"/>, the timeout or the server's stop, whichever comes first; the timer goes with it.</summary>
    private async Task WaitAsync(Task task, TimeSpan timeout)
    {
        try
        {
            await task.WaitAsync(timeout, _stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            // The caller looks at the state to decide what to answer.
        }
    }

    private Writer? DeadReply()
    {
        lock (_lock)
        {
            return _dead is { } d ? new Writer().Byte((byte)Status.PeerDead).Int32(d.Rank).String(d.Reason) : null;
        }
    }

    private void Put(string key, byte[] value)
    {
        List<TaskCompletionSource> ready;
        lock (_lock)
        {
            _data[key] = value;
            ready = TakeReadyWaiters();
        }
        ready.ForEach(t => t.TrySetResult());
    }

    private Writer Add(string key, long delta)
    {
        long value;
        List<TaskCompletionSource> ready;
        lock (_lock)
        {
            if (_data.TryGetValue(key, out var old) && old.Length != 8)
            {
                return new Writer().Byte((byte)Status.Error).String($"key '{key}' holds {old.Length} bytes, not a counter");
            }
            value = (old is null ? 0 : BinaryPrimitives.ReadInt64LittleEndian(old)) + delta;
            var bytes = new byte[8];
            BinaryPrimitives.WriteInt64LittleEndian(bytes, value);
            _data[key] = bytes;
            ready = TakeReadyWaiters();
        }
        ready.ForEach(t => t.TrySetResult());
        return Ok().Int64(value);
    }

    private Writer CompareAndSet(string key, byte[]? expected, byte[] desired)
    {
        bool swapped;
        byte[]? current;
        List<TaskCompletionSource> ready = [];
        lock (_lock)
        {
            _data.TryGetValue(key, out current);
            swapped = expected is null ? current is null : current is not null && current.AsSpan().SequenceEqual(expected);
            if (swapped)
            {
                _data[key] = current = desired;
                ready = TakeReadyWaiters();
            }
        }
        ready.ForEach(t => t.TrySetResult());
        return Ok().Byte(swapped ? (byte)1 : (byte)0).Byte(current is null ? (byte)0 : (byte)1).Bytes(current ?? []);
    }

    /// <param name="drop">A key to delete once the values are there (with them, under the same lock): a gather's previous key.</param>
    private async Task<Writer> WaitGetAsync(string[] keys, TimeSpan timeout, string? drop = null)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        (HashSet<string>, TaskCompletionSource) waiter = (new HashSet<string>(keys, StringComparer.Ordinal), done);
        var pending = false;
        lock (_lock)
        {
            if (keys.All(_data.ContainsKey))
            {
                return Values(keys, drop);
            }
            if (_dead is null)
            {
                _waiters.Add(waiter);
                pending = true;
            }
        }
        if (pending)
        {
            Changed?.Invoke();
        }
        try
        {
            if (DeadReply() is { } dead)
            {
                return dead;
            }
            await WaitAsync(done.Task, timeout).ConfigureAwait(false);
        }
        finally
        {
            lock (_lock)
            {
                _waiters.Remove(waiter);
            }
        }
        lock (_lock)
        {
            if (keys.All(_data.ContainsKey))
            {
                return Values(keys, drop);
            }
        }
        if (DeadReply() is { } died)
        {
            return died;
        }
        var missing = new Writer().Byte((byte)Status.Timeout);
        lock (_lock)
        {
            var absent = keys.Where(k => !_data.ContainsKey(k)).ToList();
            missing.Int32(absent.Count);
            absent.ForEach(k => missing.String(k));
        }
        return missing;
    }

    /// <summary>The values of <paramref name="keys"/> (call under the lock), then <paramref name="drop"/> deleted when given.</summary>
    private Writer Values(string[] keys, string? drop = null)
    {
        var w = Ok().Int32(keys.Length);
        foreach (var k in keys)
        {
            w.Bytes(_data[k]);
        }
        if (drop is not null)
        {
            _data.Remove(drop);
        }
        return w;
    }

    /// <summary>Waiters whose keys are all present now (call under the lock; complete them outside it).</summary>
    private List<TaskCompletionSource> TakeReadyWaiters() =>
        _waiters.Where(w => w.Keys.All(_data.ContainsKey)).Select(w => w.Done).ToList();

    private void MarkDead(int rank, string reason)
    {
        List<TaskCompletionSource> waiting;
        lock (_lock)
        {
            _dead ??= (rank, reason);
            waiting = _waiters.Select(w => w.Done).ToList();
        }
        waiting.ForEach(t => t.TrySetResult());
        _death.TrySetResult();
    }

    /// <summary>
    /// Raised, outside the lock, when a wait starts pending (WaitGet or WatchDead) and when a rank has
    /// left: tests await these moments instead of sleeping through them.
    /// </summary>
    internal event Action? Changed;

    /// <summary>Waits (WaitGet and WatchDead) the store holds open that nothing has answered yet.</summary>
    internal int PendingWaits
    {
        get
        {
            lock (_lock)
            {
                return _waiters.Count(w => !w.Done.Task.IsCompleted) + (_death.Task.IsCompleted ? 0 : _watchers);
            }
        }
    }

    /// <summary>The keys held now (tests check that what a run publishes is taken back).</summary>
    internal IReadOnlyList<string> Keys
    {
        get
        {
            lock (_lock)
            {
                return [.. _data.Keys];
            }
        }
    }

    /// <summary>Connected ranks (not tools); a rank leaves by saying goodbye or by dying.</summary>
    public int ConnectedRanks
    {
        get
        {
            lock (_lock)
            {
                return _members.Count;
            }
        }
    }

    /// <summary>
    /// Waits until no rank is connected, or the deadline passes: rank 0 leaving must not pull the store
    /// from under ranks that are still finishing their last collectives.
    /// </summary>
    public async Task WaitForRanksToLeaveAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (ConnectedRanks > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }
        _stop.Cancel();
        _listener.Dispose();
        lock (_lock)
        {
            foreach (var s in _connections)
            {
                s.Dispose();
            }
            _connections.Clear();
        }
    }
}
