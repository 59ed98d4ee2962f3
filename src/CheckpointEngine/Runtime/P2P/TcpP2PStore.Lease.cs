using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using CheckpointEngine.Runtime.Rendezvous;
using CheckpointEngine.Runtime.Security;

namespace CheckpointEngine.Runtime.P2P;

/// <summary>
/// Leases: the control side of one-sided reads (<see cref="UcxP2PStore"/>). Over the authenticated
/// connection a reader asks for buffers by name; the owner answers with its worker address and, per
/// buffer, its address, length and packed remote key, and holds the buffers registered until the reader
/// says it is done (as it does while it sends a TCP reply), so the capabilities never leave this
/// connection and never outlive a registration silently: a lease that <see cref="Unregister"/> cut off
/// (or an owner that died) fails the reader's closing exchange, and with it the read.
/// </summary>
/// <remarks>
/// <code>
/// reader → owner  Int32 −1, count, names, Int64 ms (a read request starts with a count ≥ 0 instead; ms: the read's time left)
/// owner → reader  0, frame(worker address, count, (address, length, remote key) per name) | 1, frame(why)
/// ... the reader's one-sided reads ...
/// reader → owner  Int32 −2                         (at the latest ms + the send deadline after the grant, else the owner drops the reader)
/// owner → reader  0                                (the buffers stayed registered throughout)
/// </code>
/// </remarks>
public sealed partial class TcpP2PStore
{
    private const int LeaseRequest = -1;
    private const int LeaseEnd = -2;

    /// <summary>A UCX store's side of leases.</summary>
    internal interface IRemoteAccess
    {
        /// <summary>The worker address readers connect their endpoint to.</summary>
        ReadOnlySpan<byte> WorkerAddress { get; }

        /// <summary>The packed remote key of a registered buffer, or null when the buffer is not mapped for one-sided reads.</summary>
        byte[]? RemoteKey(string buffer);

        /// <summary>A reader holds a lease until the result is disposed: its gets may need this owner's progress.</summary>
        IDisposable Hold();

        /// <summary>
        /// <see cref="Unregister"/> cut off leases or reads at the send deadline (every one held then; none can
        /// be granted until this returns); <paramref name="buffer"/> is about to go. Called under the buffers' lock.
        /// </summary>
        void CutOff(string buffer);
    }

    /// <summary>One buffer of a lease: where it lies in the owner and the key that opens it.</summary>
    internal readonly record struct LeasedBuffer(string Name, long Address, long Length, byte[] RemoteKey);

    private readonly IRemoteAccess? _remote;

    private void GrantLease(Socket socket, NetworkStream stream, string peer, byte[] request)
    {
        var reader = new StoreProtocol.Reader(request);
        _ = reader.Int32();
        var names = new string[reader.Count(4)];
        for (var i = 0; i < names.Length; i++)
        {
            names[i] = reader.String();
        }
        var holdMs = reader.Int64();
        if (holdMs < 0)
        {
            throw new InvalidDataException($"a lease asked to be held for {holdMs} ms");
        }
        socket.SendTimeout = (int)Math.Clamp(SendDeadline.TotalMilliseconds, 1, int.MaxValue);
        _buffersLock.EnterReadLock(); // Unregister waits until the reader is done, or drops it after SendDeadline.
        _answering[socket] = peer;
        try
        {
            var grant = new StoreProtocol.Writer();
            string? problem = _remote is null ? "this owner serves TCP reads only (it runs the tcp P2P transport)" : null;
            if (_remote is not null)
            {
                grant.Bytes(_remote.WorkerAddress).Int32(names.Length);
                foreach (var name in names)
                {
                    if (!_buffers.TryGetValue(name, out var b))
                    {
                        problem = $"no buffer '{name}' is registered here";
                        break;
                    }
                    if (_remote.RemoteKey(name) is not { } key)
                    {
                        problem = $"buffer '{name}' is not mapped for one-sided reads";
                        break;
                    }
                    grant.Int64(b.Address).Int64(b.Length).Bytes(key);
                }
            }
            if (problem is not null)
            {
                socket.Send([1]);
                socket.Send(new StoreProtocol.Writer().String(problem).ToFrame().Span);
                return;
            }
            using (_remote!.Hold())
            {
                socket.Send([0]);
                socket.Send(grant.ToFrame().Span);
                // Held until the reader is done: its next frame must end the lease, by its own deadline and the send
                // deadline; a stalled reader would otherwise keep this owner polling for it.
                var end = AwaitLeaseEnd(stream, peer, TimeSpan.FromMilliseconds(Math.Min(holdMs, int.MaxValue)) + SendDeadline) ?? throw new IOException("the reader left during its lease");
                if (end.Length != 4 || BitConverter.ToInt32(end) != LeaseEnd)
                {
                    throw new InvalidDataException("a lease was not ended by its reader");
                }
            }
            socket.Send([0]);
        }
        finally
        {
            _answering.TryRemove(socket, out _);
            _buffersLock.ExitReadLock();
        }
    }

    private byte[]? AwaitLeaseEnd(NetworkStream stream, string peer, TimeSpan limit)
    {
        using var held = new CancellationTokenSource(TimeSpan.FromMilliseconds(Math.Min(limit.TotalMilliseconds, int.MaxValue)));
        try
        {
            return StoreProtocol.ReadFrameAsync(stream, held.Token).GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            Handshake.Logger.LogWarning("{Listener}: dropped the reader at {Peer}: it held its lease {Seconds:0.###} s, past its read's deadline and the send deadline",
                Handshake.P2P, peer, limit.TotalSeconds);
            throw new IOException("a lease was held past its deadline");
        }
    }

    /// <summary>
    /// Asks <paramref name="owner"/> for a lease on <paramref name="buffers"/>; the caller reads, then
    /// calls <see cref="Lease.End"/>, and disposes the lease in every case.
    /// </summary>
    /// <exception cref="P2PException">The owner refused (naming why), vanished, or did not answer before <paramref name="deadline"/>.</exception>
    internal Lease TakeLease(string owner, IReadOnlyList<string> buffers, DateTime deadline, CancellationToken ct)
    {
        var gate = _connectionLocks.GetOrAdd(owner, _ => new SemaphoreSlim(1, 1));
        if (!gate.Wait(Remaining(deadline), ct))
        {
            throw new P2PException($"P2P read from {owner}: another read from it did not finish within the deadline");
        }
        var socket = default(Socket);
        try
        {
            socket = _connections.TryGetValue(owner, out var s) ? s : Connect(owner, owner, deadline);
            var request = new StoreProtocol.Writer().Int32(LeaseRequest).Int32(buffers.Count);
            foreach (var name in buffers)
            {
                request.String(name);
            }
            request.Int64(Remaining(deadline));
            socket.SendTimeout = Remaining(deadline);
            socket.Send(request.ToFrame().Span);
            var status = new byte[1];
            Receive(socket, status, deadline, owner, ct);
            var reply = new StoreProtocol.Reader(ReceiveFrame(socket, deadline, owner, ct));
            if (status[0] != 0)
            {
                throw new P2PException($"P2P read from {owner} refused: {reply.String()}", new LeaseRefusedException());
            }
            var address = reply.Bytes();
            var granted = new LeasedBuffer[reply.Count(20)];
            for (var i = 0; i < granted.Length; i++)
            {
                granted[i] = new LeasedBuffer(buffers[i], reply.Int64(), reply.Int64(), reply.Bytes());
            }
            if (granted.Length != buffers.Count)
            {
                throw new InvalidDataException($"a lease of {buffers.Count} buffers came back with {granted.Length}");
            }
            return new Lease(this, owner, socket, gate, address, granted);
        }
        catch (Exception e)
        {
            // A refusal leaves the connection in step; anything else leaves it unknown: never reuse it.
            if (e.InnerException is not LeaseRefusedException && socket is not null && _connections.TryRemove(owner, out var broken))
            {
                broken.Dispose();
            }
            gate.Release();
            throw e is P2PException or OperationCanceledException ? e : new P2PException($"P2P read from {owner} failed: {e.Message}", e);
        }
    }

    private sealed class LeaseRefusedException : Exception;

    /// <summary>A lease held on one owner's buffers (and the connection to it, which no other read uses meanwhile).</summary>
    internal sealed class Lease(TcpP2PStore store, string owner, Socket socket, SemaphoreSlim gate, byte[] workerAddress, IReadOnlyList<LeasedBuffer> buffers) : IDisposable
    {
        private bool _ended;
        private int _disposed;

        public string Owner => owner;

        public byte[] WorkerAddress => workerAddress;

        public IReadOnlyList<LeasedBuffer> Buffers => buffers;

        /// <summary>The owner closed the connection (it exited, or cut the lease off): whatever is still being read is void.</summary>
        public bool OwnerGone
        {
            get
            {
                try
                {
                    return socket.Poll(0, SelectMode.SelectRead);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return true;
                }
            }
        }

        /// <summary>Ends the lease: succeeds only if the owner kept the buffers registered for all of it.</summary>
        /// <exception cref="P2PException">The owner is gone or cut the lease off; what was read cannot be trusted.</exception>
        public void End(DateTime deadline, CancellationToken ct)
        {
            try
            {
                socket.SendTimeout = Remaining(deadline);
                socket.Send(new StoreProtocol.Writer().Int32(LeaseEnd).ToFrame().Span);
                var ack = new byte[1];
                Receive(socket, ack, deadline, owner, ct);
                if (ack[0] != 0)
                {
                    throw new P2PException($"P2P owner {owner} sent a malformed end of lease ({ack[0]})");
                }
                _ended = true;
            }
            catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
            {
                throw new P2PException($"P2P owner {owner} closed the connection mid-read (did it exit?)", e);
            }
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                return;
            }
            if (!_ended && store._connections.TryRemove(owner, out var broken))
            {
                broken.Dispose(); // Mid-lease: the owner drops the lease when the connection goes.
            }
            gate.Release();
        }
    }
}
