using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.Security;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>The data plane of the built-in communicator: pipelined chunked broadcast.</summary>
public sealed partial class ProcessGroup
{
    private const int PollMicroseconds = 100_000;
    private const int SocketBufferSize = 4 << 20;

    /// <summary>Link transfers kept until taken; past this many the later ones are dropped (nobody takes them).</summary>
    private const int MaxLinkTransfers = 1 << 16;

    private readonly List<LinkTransfer> _linkTransfers = [];
    private long _networkBytesReceived;

    /// <summary>Bytes of broadcasts received on data links from other hosts' leaders.</summary>
    public long NetworkBytesReceived => Interlocked.Read(ref _networkBytesReceived);

    /// <summary>The data-link legs of broadcasts since the last call: one per broadcast and link, at each end.</summary>
    public IReadOnlyList<LinkTransfer> TakeLinkTransfers()
    {
        lock (_linkTransfers)
        {
            var taken = _linkTransfers.ToArray();
            _linkTransfers.Clear();
            return taken;
        }
    }

    private void RecordLink(int peer, bool sent, long bytes, (long Start, long End, long Busy) t)
    {
        lock (_linkTransfers)
        {
            if (_linkTransfers.Count < MaxLinkTransfers)
            {
                _linkTransfers.Add(new LinkTransfer(Members[peer], _topology!.Endpoints[peer].Address.ToString(), sent, bytes, t.Start, t.End, Stopwatch.GetElapsedTime(0, t.Busy)));
            }
        }
    }

    public Task BroadcastAsync(nint buffer, long length, int root, TimeSpan timeout, CancellationToken ct = default) =>
        BroadcastCoreAsync(buffer, length, root, null, 0, timeout, ct);

    /// <summary>
    /// Readers on the root's host copy only their runs out of the root's shared buffer (a part, not the whole: their
    /// ingress is their part); the root and host leaders, which hold or relay the whole, cut their runs out once their
    /// local readers are done; readers that get the bytes through the ring cut theirs out after.
    /// </summary>
    public Task BroadcastPartAsync(nint buffer, long length, int root, IReadOnlyList<ByteRun> runs, nint destination, TimeSpan timeout, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(runs);
        return BroadcastCoreAsync(buffer, length, root, runs, destination, timeout, ct);
    }

    private Task BroadcastCoreAsync(nint buffer, long length, int root, IReadOnlyList<ByteRun>? runs, nint destination, TimeSpan timeout, CancellationToken ct)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (root < 0 || root >= Size)
        {
            throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is not a rank of group '{Name}' (size {Size})");
        }
        if (buffer == 0 && length > 0)
        {
            throw new ArgumentException("null buffer", nameof(buffer));
        }
        var seq = Begin();
        if (Size == 1 || length == 0)
        {
            if (runs is not null)
            {
                ByteRun.CopyAll(runs, buffer, destination);
            }
            return Task.CompletedTask;
        }
        var wait = new WaitContext($"broadcast #{seq} from rank {Members[root]} ({length} bytes)", Name, timeout, _world, ct);
        // Blocking copies and socket calls on a dedicated thread: a bucket broadcast is long and must not starve the pool.
        return Task.Factory.StartNew(() =>
        {
            var direct = Run(buffer, length, root, seq, wait, runs, destination);
            if (runs is not null && !direct)
            {
                ByteRun.CopyAll(runs, buffer, destination); // The whole is here (root, leader, ring reader): cut the part out.
            }
        }, ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <returns>True when this rank, a reader, copied its <paramref name="runs"/> straight from the writer's buffer into <paramref name="destination"/>.</returns>
    private unsafe bool Run(nint buffer, long length, int root, long seq, WaitContext wait, IReadOnlyList<ByteRun>? runs, nint destination)
    {
        var direct = false;
        var topology = _topology!;
        var (previous, next, isLeader) = topology.Chain(root, Rank);
        var writer = Members[topology.Leader(root, topology.HostOf[Rank])];
        var data = (byte*)buffer;
        var chunks = (int)((length + ShmRing.ChunkSize - 1) / ShmRing.ChunkSize);
        try
        {
            if (!isLeader)
            {
                var descriptor = _ring!.Await(seq, length, wait, writer);
                if (descriptor.Mode == ShmRing.Mode.Direct && runs is not null)
                {
                    _ring.CopyRunsDirect((byte*)destination, PeerSegment(descriptor.Segment, descriptor.Offset + length, wait, writer) + descriptor.Offset, length, runs, wait, writer);
                    direct = true;
                }
                else if (descriptor.Mode == ShmRing.Mode.Direct)
                {
                    _ring.CopyDirect(data, PeerSegment(descriptor.Segment, descriptor.Offset + length, wait, writer) + descriptor.Offset, length, wait, writer);
                }
                else
                {
                    for (long offset = 0; offset < length; offset += ShmRing.ChunkSize)
                    {
                        _ring.ReadChunk(data + offset, (int)Math.Min(ShmRing.ChunkSize, length - offset), seq, length, wait, writer);
                    }
                }
                _ring.Finish();
                return direct;
            }
            var shared = _ring is null ? null : SharedSegmentHolding(buffer, length);
            _ring?.Begin(seq, length, shared is null ? ShmRing.Mode.Ring : ShmRing.Mode.Direct, shared?.Name, buffer - shared?.Address ?? 0, wait);
            var input = previous >= 0 ? Inbound(previous, wait) : null;
            var output = next >= 0 ? Outbound(next, wait) : null;
            if (shared is not null && input is null)
            {
                _ring!.Progress(chunks); // The root has it all: local readers copy while the chain is fed.
            }
            Span<byte> header = stackalloc byte[16];
            if (input is not null)
            {
                Receive(input, header, wait, previous);
                var (theirSeq, theirLength) = (BinaryPrimitives.ReadInt64LittleEndian(header), BinaryPrimitives.ReadInt64LittleEndian(header[8..]));
                if (theirSeq != seq || theirLength != length)
                {
                    throw wait.Fail($"this rank expects broadcast #{seq} of {length} bytes but rank {Members[previous]} sent #{theirSeq} of {theirLength} bytes (members disagree on the call)", Members[previous]);
                }
            }
            if (output is not null)
            {
                BinaryPrimitives.WriteInt64LittleEndian(header, seq);
                BinaryPrimitives.WriteInt64LittleEndian(header[8..], length);
                Send(output, header, wait, next);
            }
            // Each leg's time blocked in the socket, two timestamps a chunk: which link is slow (see LinkTransfer).
            (long Start, long End, long Busy) received = default, sent = default;
            for (var i = 0; i < chunks && (input is not null || output is not null || shared is null && _ring is not null); i++)
            {
                var offset = (long)i * ShmRing.ChunkSize;
                var n = (int)Math.Min(ShmRing.ChunkSize, length - offset);
                var chunk = new Span<byte>(data + offset, n);
                if (input is not null)
                {
                    var t = Stopwatch.GetTimestamp();
                    Receive(input, chunk, wait, previous);
                    received = Timed(received, t, i == 0);
                    Interlocked.Add(ref _networkBytesReceived, chunk.Length);
                }
                if (output is not null)
                {
                    var t = Stopwatch.GetTimestamp();
                    Send(output, chunk, wait, next);
                    sent = Timed(sent, t, i == 0);
                }
                if (shared is not null && input is not null)
                {
                    _ring!.Progress(i + 1);
                }
                else if (shared is null)
                {
                    _ring?.WriteChunk(data + offset, n, seq, length, wait);
                }
            }
            if (input is not null)
            {
                RecordLink(previous, sent: false, length, received);
            }
            if (output is not null)
            {
                RecordLink(next, sent: true, length, sent);
            }
            if (shared is not null)
            {
                _ring!.AwaitReaders(wait); // Readers copy from this buffer: it must not change before they are done.
            }
            _ring?.Finish();
            return false;
        }
        catch (CollectiveException e)
        {
            _failure ??= e.Message;
            throw;
        }
    }

    /// <summary>A leg's times with one more chunk that took from <paramref name="since"/> until now.</summary>
    private static (long Start, long End, long Busy) Timed((long Start, long End, long Busy) leg, long since, bool first)
    {
        var now = Stopwatch.GetTimestamp();
        return (first ? since : leg.Start, now, leg.Busy + now - since);
    }

    /// <summary>The registered segment that holds [buffer, buffer + length), if any: local readers can copy from it directly.</summary>
    private SharedMemorySegment? SharedSegmentHolding(nint buffer, long length)
    {
        lock (_shared)
        {
            return _shared.FirstOrDefault(s => buffer >= s.Address && buffer - s.Address <= s.Size - length);
        }
    }

    /// <summary>A writer's segment mapped here (kept for the group's life), large enough for <paramref name="needed"/> bytes.</summary>
    private unsafe byte* PeerSegment(string name, long needed, in WaitContext wait, int writer)
    {
        if (!_peerSegments.TryGetValue(name, out var segment) || segment.Size < needed)
        {
            try
            {
                segment?.Dispose();
                segment = SharedMemorySegment.Open(name);
            }
            catch (IOException e)
            {
                throw wait.Fail($"cannot map rank {writer}'s shared buffer {name}: {e.Message}", writer, e);
            }
            if (segment.Size < needed)
            {
                segment.Dispose();
                throw wait.Fail($"rank {writer}'s shared buffer {name} is {segment.Size} bytes, the broadcast needs {needed}", writer);
            }
            _peerSegments[name] = segment;
        }
        return segment.Pointer;
    }

    /// <summary>
    /// Tells the group that a buffer lives in a shared segment: broadcasts from it to ranks on this host
    /// then copy straight out of it instead of through the channel (one copy per reader instead of two).
    /// The segment must stay mapped, and keep its name, while the group uses it.
    /// </summary>
    public void RegisterSharedMemory(SharedMemorySegment segment)
    {
        lock (_shared)
        {
            if (!_shared.Contains(segment))
            {
                _shared.Add(segment);
            }
        }
    }

    public void UnregisterSharedMemory(SharedMemorySegment segment)
    {
        lock (_shared)
        {
            _shared.Remove(segment);
        }
    }

    private void Receive(Socket socket, Span<byte> target, in WaitContext wait, int peer)
    {
        while (!target.IsEmpty)
        {
            wait.Check(Members[peer]);
            try
            {
                if (!socket.Poll(PollMicroseconds, SelectMode.SelectRead))
                {
                    continue;
                }
                var got = socket.Receive(target);
                if (got == 0)
                {
                    throw wait.Fail($"rank {Members[peer]} closed its data link mid-broadcast{Cause()}", Members[peer]);
                }
                target = target[got..];
            }
            catch (SocketException e)
            {
                throw wait.Fail($"data link from rank {Members[peer]} failed: {e.Message}{Cause()}", Members[peer], e);
            }
        }
    }

    private void Send(Socket socket, ReadOnlySpan<byte> source, in WaitContext wait, int peer)
    {
        wait.Check(Members[peer]);
        try
        {
            socket.SendTimeout = wait.RemainingMs;
            while (!source.IsEmpty)
            {
                source = source[socket.Send(source)..];
            }
        }
        catch (SocketException e)
        {
            var problem = e.SocketErrorCode == SocketError.TimedOut
                ? $"rank {Members[peer]} did not take data within the deadline"
                : $"data link to rank {Members[peer]} failed: {e.Message}";
            throw wait.Fail(problem + Cause(), Members[peer], e);
        }
    }

    /// <summary>Why the world broke, when it did: a socket error is usually the symptom of a dead rank.</summary>
    private string Cause() => _world.BrokenReason is { } r ? $" ({r})" : "";

    /// <summary>The link on which <paramref name="peer"/> sends to this rank; the peer dials it.</summary>
    private Socket Inbound(int peer, in WaitContext wait)
    {
        var link = _world.InboundLink(Uid, Members[peer]).Task;
        while (!link.Wait(PollMicroseconds / 1000))
        {
            wait.Check(Members[peer]);
        }
        return link.Result;
    }

    /// <summary>The link on which this rank sends to <paramref name="peer"/>, dialled on first use and kept for the group's life.</summary>
    private Socket Outbound(int peer, in WaitContext wait)
    {
        if (_outbound.TryGetValue(peer, out var cached))
        {
            return cached;
        }
        var endpoint = _topology!.Endpoints[peer];
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
        {
            NoDelay = true,
            SendBufferSize = SocketBufferSize,
            ReceiveBufferSize = SocketBufferSize,
        };
        try
        {
            using (var cts = new CancellationTokenSource(wait.RemainingMs))
            {
                socket.ConnectAsync(endpoint, cts.Token).AsTask().GetAwaiter().GetResult();
            }
            using (var stream = new NetworkStream(socket, ownsSocket: false))
            using (var cts = new CancellationTokenSource(wait.RemainingMs))
            {
                var claim = new Handshake.Claim(_world.Rank, World.LinkId(Uid));
                _world.DataLinks.ConnectAsync(stream, claim, $"{endpoint} (rank {Members[peer]})", cts.Token).GetAwaiter().GetResult();
            }
        }
        catch (HandshakeException e)
        {
            socket.Dispose();
            throw wait.Fail(e.Message, Members[peer], e);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException or InvalidDataException)
        {
            socket.Dispose();
            throw wait.Fail($"cannot open a data link to rank {Members[peer]} at {endpoint}: {e.Message}{Cause()}", Members[peer], e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        _outbound[peer] = socket;
        return socket;
    }
}
