using System.Collections.Concurrent;
using System.Net;

namespace CheckpointEngine.Runtime.P2P;

/// <summary>
/// P2P reads over UCX: owners map their registered buffers (<c>ucp_mem_map</c>) and readers pull byte
/// ranges with one-sided gets (<c>ucp_get_nbx</c>) straight into their destination, over RDMA on a
/// cluster and over shared memory/CMA within a host; the owner's CPU takes no part. The worker address
/// and remote keys are capabilities: a reader gets them only through a lease on the owner's
/// token-authenticated <see cref="TcpP2PStore"/> connection, never from the metas. That TCP store is also
/// this store's <see cref="Address"/>, and it still serves plain TCP reads to readers that use TCP.
/// Serving and reading use separate workers: a reader's worker that must be destroyed under a read it
/// could not cut off (see <see cref="UcxWorker.Retired"/>) is replaced without touching what this rank serves.
/// </summary>
public sealed class UcxP2PStore : IP2PStore, TcpP2PStore.IRemoteAccess
{
    private volatile UcxWorker _worker;
    private readonly IReadOnlyDictionary<string, string> _settings;
    private readonly bool _peerErrors;
    private readonly bool _sameHostOnly;
    private readonly Lock _readerLock = new();
    private UcxWorker? _reader;
    private readonly TcpP2PStore _control;
    private readonly ConcurrentDictionary<string, Mapping> _mapped = new(StringComparer.Ordinal);
    private readonly Lock _mapLock = new();
    private int _disposed;

    /// <param name="settings">UCX settings on top of its <c>UCX_*</c> environment (<c>NET_DEVICES</c>, <c>TLS</c>; see <see cref="P2PTransports.Create(P2PTransport, IPAddress, string?, IReadOnlyList{RdmaDevice}, bool)"/>).</param>
    /// <param name="peerErrors">Endpoints that report a failed owner (RDMA, TCP); without, only the control connection tells (shared memory).</param>
    /// <param name="sameHostOnly">UCX has no transport to other hosts (no RDMA device, and UCX's TCP transport left off): a read from an owner elsewhere fails at once, saying what to change.</param>
    /// <exception cref="Interop.BackendUnavailableException">UCX is not installed here; the message says what was tried and how to fix it.</exception>
    public UcxP2PStore(IPAddress address, string? token, IReadOnlyDictionary<string, string>? settings = null, bool peerErrors = false, bool sameHostOnly = false)
    {
        (_settings, _peerErrors, _sameHostOnly) = (settings ?? new Dictionary<string, string>(), peerErrors, sameHostOnly);
        _worker = new UcxWorker(_settings, peerErrors);
        try
        {
            _control = new TcpP2PStore(address, token, this);
        }
        catch
        {
            _worker.Dispose();
            throw;
        }
    }

    public string Address => _control.Address;

    public string Transport => "ucx";

    /// <summary>The same buffers over plain TCP: for a reader that chose the tcp transport per update.</summary>
    public IP2PStore Tcp => _control;

    /// <summary>The UCX worker that serves this rank's buffers (for tests: a paused progress thread); a new one after a lease was cut off.</summary>
    internal UcxWorker Worker => _worker;

    /// <summary>The UCX worker reads run on, made on first use and again after one retired.</summary>
    internal UcxWorker Reader
    {
        get
        {
            lock (_readerLock)
            {
                ObjectDisposedException.ThrowIf(_disposed != 0, this);
                if (_reader is null || _reader.Retired)
                {
                    _reader?.Dispose();
                    _reader = new UcxWorker(_settings, _peerErrors);
                }
                return _reader;
            }
        }
    }

    /// <summary>The control store (its handshake and send deadline are settable for tests).</summary>
    internal TcpP2PStore Control => _control;

    ReadOnlySpan<byte> TcpP2PStore.IRemoteAccess.WorkerAddress => _worker.Address;

    byte[]? TcpP2PStore.IRemoteAccess.RemoteKey(string buffer) => _mapped.TryGetValue(buffer, out var m) ? m.RemoteKey : null;

    IDisposable TcpP2PStore.IRemoteAccess.Hold() => _worker.Hold();

    /// <summary>
    /// Leases were cut off at the send deadline, and their readers' gets may still be on their way here. UCX
    /// emulates gets between processes of a host and over its TCP transport with messages that carry a bare
    /// address, which this worker's progress would answer from memory that is about to go (after unmapping
    /// too: nothing checks the key). So the worker that served them is destroyed before the buffer goes, and
    /// a new one maps the other buffers: their keys change, and every lease was cut off with the others.
    /// </summary>
    void TcpP2PStore.IRemoteAccess.CutOff(string buffer)
    {
        lock (_mapLock)
        {
            var old = _worker;
            var stale = _mapped.Values.Select(m => m.Memh).ToList();
            _mapped.TryRemove(buffer, out _);
            try
            {
                var fresh = new UcxWorker(_settings, _peerErrors);
                _worker = fresh;
                foreach (var (name, m) in _mapped)
                {
                    var (memh, key) = fresh.Map(m.Address, m.Length);
                    _mapped[name] = m with { Memh = memh, RemoteKey = key, Worker = fresh };
                }
            }
            finally
            {
                try
                {
                    stale.ForEach(old.Unmap);
                }
                finally
                {
                    old.Dispose(); // Destroyed here, it answers nothing any more.
                }
            }
        }
    }

    public void Register(string name, nint address, long length)
    {
        Mapping mapping;
        lock (_mapLock) // Not while a cut-off replaces the worker.
        {
            if (_mapped.ContainsKey(name))
            {
                throw new InvalidOperationException($"P2P buffer '{name}' is already registered");
            }
            var (memh, key) = _worker.Map(address, Math.Max(length, 1));
            mapping = new Mapping(address, Math.Max(length, 1), memh, key, _worker);
            _mapped[name] = mapping;
        }
        try
        {
            _control.Register(name, address, length);
        }
        catch
        {
            _mapped.TryRemove(name, out _);
            mapping.Worker.Unmap(mapping.Memh);
            throw;
        }
    }

    /// <summary>Removes the buffer once no lease on it is held (or, past the send deadline, cuts the lease off), then unmaps it.</summary>
    public void Unregister(string name)
    {
        _control.Unregister(name);
        if (_mapped.TryRemove(name, out var mapping))
        {
            mapping.Worker.Unmap(mapping.Memh);
        }
    }

    /// <summary>A buffer mapped for one-sided reads, by the worker that serves it.</summary>
    private readonly record struct Mapping(nint Address, long Length, nint Memh, byte[] RemoteKey, UcxWorker Worker);

    public Task ReadAsync(string owner, IReadOnlyList<P2PRead> reads, TimeSpan timeout, CancellationToken ct = default) =>
        Task.Factory.StartNew(() => Read(owner, reads, timeout, ct), ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private void Read(string owner, IReadOnlyList<P2PRead> reads, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + timeout;
        if (_sameHostOnly && !OnThisHost(owner))
        {
            throw new P2PException($"P2P read from {owner} over ucx: the owner is on another host, and UCX here reaches other hosts only over RDMA (no device found) or " +
                $"its TCP transport, which is off by default ({UnreachableHint})");
        }
        var names = reads.Select(r => r.Buffer).Distinct(StringComparer.Ordinal).ToList();
        using var lease = _control.TakeLease(owner, names, deadline, ct);
        var gets = new List<UcxGet>(reads.Count);
        foreach (var r in reads)
        {
            var key = names.IndexOf(r.Buffer);
            var b = lease.Buffers[key];
            if (r.Offset < 0 || r.Length < 0 || r.Offset > b.Length - r.Length)
            {
                throw new P2PException($"P2P read from {owner} refused: range [{r.Offset}, +{r.Length}) is outside buffer '{r.Buffer}' ({b.Length} bytes)");
            }
            if (r.Length > 0)
            {
                gets.Add(new UcxGet(key, (ulong)(b.Address + r.Offset), r.Destination, r.Length));
            }
        }
        UcxWorker.Batch batch;
        try
        {
            batch = Reader.Read(owner, lease.WorkerAddress, [.. lease.Buffers.Select(b => b.RemoteKey)], gets, deadline, ct);
        }
        catch (ObjectDisposedException) when (_disposed == 0)
        {
            // The reader's worker retired just now (another read it could not cut off): a new one takes this read.
            batch = Reader.Read(owner, lease.WorkerAddress, [.. lease.Buffers.Select(b => b.RemoteKey)], gets, deadline, ct);
        }
        // One-sided reads do not notice an owner that exits; its control connection closing does.
        while (Task.WhenAny(batch.Completion, Task.Delay(50, CancellationToken.None)).GetAwaiter().GetResult() != batch.Completion)
        {
            if (lease.OwnerGone)
            {
                batch.Abort($"P2P owner {owner} closed the connection mid-read (did it exit?)");
            }
        }
        batch.Completion.GetAwaiter().GetResult();
        lease.End(deadline, ct);
    }

    /// <summary>What to do when UCX cannot reach an owner.</summary>
    internal const string UnreachableHint = "use --p2p-transport tcp, or set UCX_TLS on owners and readers alike to transports that reach each other, e.g. UCX_TLS=tcp, knowing that UCX's TCP transport does not check remote keys";

    /// <summary>Whether <paramref name="owner"/> (IP:port) is an address of this host.</summary>
    private static bool OnThisHost(string owner)
    {
        var colon = owner.LastIndexOf(':');
        if (colon <= 0 || !IPAddress.TryParse(owner[..colon].Trim('[', ']'), out var ip))
        {
            return true; // Not an address: the lease names the problem.
        }
        return IPAddress.IsLoopback(ip) || System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .Any(n => n.GetIPProperties().UnicastAddresses.Any(a => a.Address.Equals(ip)));
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _control.Dispose(); // Leases end here: no reader holds a remote key that opens memory about to go.
        foreach (var name in _mapped.Keys)
        {
            if (_mapped.TryRemove(name, out var mapping)) // An Unregister racing this one unmaps what it removed.
            {
                mapping.Worker.Unmap(mapping.Memh);
            }
        }
        lock (_readerLock)
        {
            _reader?.Dispose();
        }
        _worker.Dispose();
    }
}
