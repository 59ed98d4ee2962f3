using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using CheckpointEngine.Interop.Ucx;

namespace CheckpointEngine.Runtime.P2P;

/// <summary>
/// One UCP context and worker, driven by a thread of its own: UCX's single-threaded mode, so every UCX
/// call (mapping, endpoints, gets, progress) runs there; other threads hand it work and wake it with
/// <c>ucp_worker_signal</c>. While reads are in flight or leased it polls; idle, it sleeps on the worker's
/// wake-up descriptor (an owner's worker must still answer when a reader connects).
/// </summary>
internal sealed unsafe partial class UcxWorker : IDisposable
{
    /// <summary>The largest single get: big reads are cut so that many are in flight (several NIC queues, overlapped with completion).</summary>
    internal const long ChunkBytes = 8 << 20;

    /// <summary>Gets in flight per batch.</summary>
    internal const int Window = 32;

    private static readonly TimeSpan CloseWait = TimeSpan.FromSeconds(10);

    /// <summary>How long a cut-off read's gets may take to complete once canceled and their endpoint closed, before the worker retires (see <see cref="Retire"/>).</summary>
    internal static readonly TimeSpan StuckWait = TimeSpan.FromSeconds(1);

    private readonly Ucx _ucx;
    private readonly ConcurrentQueue<(Action Run, Action<Exception> Refuse)> _commands = new();
    private readonly List<Batch> _batches = [];
    private readonly Dictionary<string, (byte[] Address, nint Ep)> _endpoints = new(StringComparer.Ordinal);
    private readonly List<nint> _closing = [];
    private readonly List<nint> _failedEndpoints = [];
    private readonly HashSet<nint> _maps = [];
    private GCHandle _self;
    private readonly Thread _thread;
    private readonly Lock _wakeLock = new();
    private nint _context;
    private nint _worker;
    private readonly bool _peerErrors;
    private int _efd;
    private volatile bool _stopping;
    private volatile bool _retired;
    private bool _closed;
    private int _leases;
    private int _inFlight;
    private int _disposed;

    /// <param name="settings">UCX settings on top of its <c>UCX_*</c> environment (e.g. <c>NET_DEVICES</c>, <c>TLS</c>).</param>
    /// <param name="peerErrors">Ask for endpoints that report a failed peer (RDMA and TCP can; shared memory in UCX 1.13 cannot).</param>
    /// <exception cref="Interop.BackendUnavailableException">No UCX here.</exception>
    /// <exception cref="UcxException">UCX refused to start (e.g. a bad setting).</exception>
    public UcxWorker(IReadOnlyDictionary<string, string> settings, bool peerErrors)
    {
        _peerErrors = peerErrors;
        _ucx = Ucx.Instance;
        _self = GCHandle.Alloc(this);
        var started = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        _thread = new Thread(() => Run(settings, started)) { IsBackground = true, Name = "ucx-progress" };
        _thread.Start();
        try
        {
            Address = started.Task.GetAwaiter().GetResult();
        }
        catch
        {
            _self.Free();
            throw;
        }
    }

    /// <summary>This worker's address: a capability, handed only to authenticated readers.</summary>
    public byte[] Address { get; }

    /// <summary>Runs <paramref name="action"/> on the progress thread and waits for it.</summary>
    public T Invoke<T>(Func<T> action)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(e => done.TrySetException(e), () =>
        {
            try
            {
                done.SetResult(action());
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        });
        return done.Task.GetAwaiter().GetResult();
    }

    /// <summary>Queues <paramref name="command"/> for the progress thread; a worker that retires first calls <paramref name="refuse"/> instead.</summary>
    private void Post(Action<Exception> refuse, Action command)
    {
        lock (_wakeLock)
        {
            // Checked under the lock that closing takes: a command is either run or refused, never lost.
            ObjectDisposedException.ThrowIf(_closed || _worker == 0, this);
            _commands.Enqueue((command, refuse));
        }
        Wake();
    }

    /// <summary>Maps <paramref name="length"/> bytes at <paramref name="address"/> for remote reads; returns the handle and its packed remote key.</summary>
    public (nint Memh, byte[] RemoteKey) Map(nint address, long length) => Invoke(() =>
    {
        var memh = _ucx.Map(_context, address, length);
        try
        {
            var key = _ucx.PackRkey(_context, memh);
            _maps.Add(memh);
            return (memh, key);
        }
        catch
        {
            _ucx.Unmap(_context, memh);
            throw;
        }
    });

    /// <summary>Unmaps <paramref name="memh"/>; nothing to do once this worker is gone (its context took every mapping with it).</summary>
    public void Unmap(nint memh)
    {
        try
        {
            Invoke(() =>
            {
                if (_maps.Remove(memh))
                {
                    _ucx.Unmap(_context, memh);
                }
                return 0;
            });
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>
    /// Starts reading every get from the worker at <paramref name="address"/> (known to readers as
    /// <paramref name="owner"/>): chunked, <see cref="Window"/> in flight. Its task ends when every byte
    /// landed or, on failure, when no get is in flight any more (the destination is the caller's again),
    /// with a <see cref="P2PException"/> naming the owner.
    /// </summary>
    public Batch Read(string owner, byte[] address, IReadOnlyList<byte[]> remoteKeys, IReadOnlyList<UcxGet> gets, DateTime deadline, CancellationToken ct)
    {
        var batch = new Batch(this, owner, address, remoteKeys, gets, deadline, ct);
        var registration = ct.Register(Wake);
        _ = batch.Completion.ContinueWith(_ => registration.Dispose(), TaskScheduler.Default);
        Post(e => batch.Finish(new P2PException($"P2P read from {owner} stopped: this reader's UCX worker was reset after a read it could not cut off", e)), () => Start(batch));
        return batch;
    }

    /// <summary>Wakes the progress thread (any thread may call it; a no-op once the worker is gone).</summary>
    private void Wake()
    {
        lock (_wakeLock)
        {
            if (_worker != 0)
            {
                _ucx.Signal(_worker);
            }
        }
    }

    private void Run(IReadOnlyDictionary<string, string> settings, TaskCompletionSource<byte[]> started)
    {
        try
        {
            var config = _ucx.ReadConfig(settings);
            try
            {
                fixed (byte* name = "ckpt-engine-p2p\0"u8)
                {
                    _context = _ucx.Init(config, Ucx.FeatureRma | Ucx.FeatureWakeup, name);
                }
            }
            finally
            {
                _ucx.ReleaseConfig(config);
            }
            _worker = _ucx.CreateWorker(_context);
            _efd = _ucx.EventFd(_worker);
            started.SetResult(_ucx.WorkerAddress(_worker));
        }
        catch (Exception e)
        {
            Teardown();
            started.SetException(e);
            return;
        }
        try
        {
            Loop();
        }
        finally
        {
            Teardown();
        }
    }

    /// <summary>
    /// Progresses while there is work, otherwise arms the wake-up descriptor (<c>ucp_worker_arm</c>; busy:
    /// progress again) and sleeps on it until UCX has news (a connecting reader, a message) or
    /// <see cref="Wake"/> is called, at most until the nearest deadline. Work is: commands, gets in
    /// flight, leases held on this owner (see <see cref="Hold"/>), and <see cref="HotMs"/> after the
    /// last news. UCX 1.13 arms its interfaces for receive events only, so neither a get's completion nor
    /// a full send queue draining signals the descriptor: those are polled, yielding the core between
    /// polls that brought nothing, so that ranks sharing few cores get theirs.
    /// </summary>
    private void Loop()
    {
        var hotUntil = 0L;
        while (true)
        {
            var worked = false;
            if (_retired)
            {
                return;
            }
            while (_commands.TryDequeue(out var command))
            {
                command.Run();
                worked = true;
            }
            if (_stopping && _batches.Count == 0 && _closing.Count == 0 && Close())
            {
                return;
            }
            for (var i = 0; i < 64 && _ucx.Progress(_worker) != 0; i++)
            {
                worked = true;
            }
            worked |= DropFailed();
            var inFlight = false;
            for (var i = _batches.Count - 1; i >= 0; i--)
            {
                worked |= _batches[i].Step(out var done);
                if (done)
                {
                    _batches.RemoveAt(i);
                }
                else
                {
                    inFlight = true;
                }
            }
            worked |= PollClosing();
            Volatile.Write(ref _inFlight, _batches.Sum(b => b.InFlight));
            if (_inFlight > 0)
            {
                GetsInFlight?.Invoke();
            }
            if (worked)
            {
                hotUntil = Environment.TickCount64 + HotMs;
                continue;
            }
            if (inFlight || _closing.Count > 0 || Volatile.Read(ref _leases) > 0 || Environment.TickCount64 < hotUntil)
            {
                Thread.Yield();
                continue;
            }
            if (_commands.IsEmpty && _ucx.Arm(_worker) && _commands.IsEmpty)
            {
                Sleeping?.Invoke();
                var fd = new PollFd { Fd = _efd, Events = PollIn };
                _ = poll(&fd, 1, SleepMs());
            }
        }
    }

    /// <summary>Gets issued and not completed: for tests, none once a read's task ended.</summary>
    internal int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Raised on the progress thread while gets are in flight (for tests that act mid-read).</summary>
    internal event Action? GetsInFlight;

    /// <summary>Holds the progress thread until <paramref name="release"/> ends (at most a minute): for tests, an owner whose gets are not served.</summary>
    internal void Pause(Task release) => Post(_ => { }, () => release.Wait(TimeSpan.FromMinutes(1)));

    /// <summary>How long the thread keeps polling after it last had news, before it sleeps: replies and completions that follow closely are not left to a wake-up.</summary>
    private const long HotMs = 2;

    /// <summary>
    /// A reader holds a lease on this owner's buffers until the result is disposed. Its gets may be served by
    /// this worker's progress: where UCX has no one-sided path between two processes (UCX 1.13 between
    /// processes of a host emulates gets with messages over shared memory), and UCX does not wake the
    /// descriptor when a full queue drains. So while a lease is held the thread keeps progressing. The hold
    /// counts on this worker, whichever serves the store when it ends.
    /// </summary>
    public IDisposable Hold()
    {
        Interlocked.Increment(ref _leases);
        Wake();
        return new Held(this);
    }

    private sealed class Held(UcxWorker worker) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
            {
                Interlocked.Decrement(ref worker._leases);
                worker.Wake();
            }
        }
    }

    /// <summary>Raised by <see cref="Dispose"/> once the thread was told to stop (for tests: it progresses no more).</summary>
    internal event Action? StopRequested;

    /// <summary>Leases held on this owner now (for tests).</summary>
    internal int Leases => Volatile.Read(ref _leases);

    /// <summary>Raised on the progress thread each time it goes to sleep on the wake-up descriptor (for tests: it stopped polling).</summary>
    internal event Action? Sleeping;

    /// <summary>How long the progress thread may sleep: until the nearest deadline, at most 100 ms (a lost event is never waited on for long).</summary>
    private int SleepMs()
    {
        var ms = 100.0;
        foreach (var b in _batches)
        {
            ms = Math.Min(ms, (b.Deadline - DateTime.UtcNow).TotalMilliseconds + 1);
        }
        return (int)Math.Clamp(ms, 0, 100);
    }

    /// <summary>Stops taking commands when none is queued (one that raced in runs first); true once closed.</summary>
    private bool Close()
    {
        lock (_wakeLock)
        {
            _closed = _commands.IsEmpty;
            return _closed;
        }
    }

    private void Start(Batch batch)
    {
        try
        {
            batch.Open();
            _batches.Add(batch);
        }
        catch (UcxException e) when (e.Call == "ucp_ep_create")
        {
            batch.Finish(new P2PException($"P2P read from {batch.Owner} over ucx: UCX has no transport to this owner ({e.Message}); {UcxP2PStore.UnreachableHint}", e));
        }
        catch (Exception e)
        {
            batch.Finish(e is P2PException ? e : new P2PException($"P2P read from {batch.Owner} failed: {e.Message}", e));
        }
    }

    /// <summary>The endpoint to <paramref name="owner"/>, made again when its worker changed (a restarted owner) or the last one failed.</summary>
    private nint Endpoint(string owner, byte[] address)
    {
        if (_endpoints.TryGetValue(owner, out var known))
        {
            if (known.Address.AsSpan().SequenceEqual(address))
            {
                return known.Ep;
            }
            Drop(owner);
        }
        var ep = _peerErrors ? _ucx.Connect(_worker, address, &OnEndpointError, GCHandle.ToIntPtr(_self)) : _ucx.Connect(_worker, address, null, 0);
        _endpoints[owner] = (address, ep);
        return ep;
    }

    /// <summary>UCX reports a failed endpoint (its peer died or its connection broke; it failed the endpoint's requests already), from within progress.</summary>
    [UnmanagedCallersOnly]
    private static void OnEndpointError(nint arg, nint ep, int status)
    {
        if (GCHandle.FromIntPtr(arg).Target is UcxWorker worker)
        {
            worker._failedEndpoints.Add(ep); // Closed after progress returns, not from inside it.
        }
    }

    /// <summary>Closes the endpoints UCX reported failed that are still in use (a read's failure may have closed one first); true when any was.</summary>
    private bool DropFailed()
    {
        if (_failedEndpoints.Count == 0)
        {
            return false;
        }
        foreach (var ep in _failedEndpoints)
        {
            if (_endpoints.FirstOrDefault(e => e.Value.Ep == ep).Key is { } owner)
            {
                Drop(owner); // The next read from this owner makes a new endpoint.
            }
        }
        _failedEndpoints.Clear();
        return true;
    }

    /// <summary>Closes the endpoint to <paramref name="owner"/> at once: its requests in flight complete with an error.</summary>
    private void Drop(string owner)
    {
        if (_endpoints.Remove(owner, out var known) && _ucx.CloseForce(known.Ep) is var r and not 0)
        {
            _closing.Add(r);
        }
    }

    /// <summary>Frees the closes that completed; true when any did.</summary>
    private bool PollClosing()
    {
        var any = false;
        for (var i = _closing.Count - 1; i >= 0; i--)
        {
            if (_ucx.Status(_closing[i]) != Ucx.InProgress)
            {
                _ucx.Free(_closing[i]);
                _closing.RemoveAt(i);
                any = true;
            }
        }
        return any;
    }

    /// <summary>
    /// This worker is done: a cut-off read left gets that neither completed nor were canceled (UCX 1.13
    /// cannot cancel gets it emulates with messages: only the owner's reply ends them, and that reply would
    /// write into memory the reader has taken back). The progress thread stops, destroys the worker (so no
    /// reply can land any more), then fails every read still on it; the store reads with a new worker.
    /// </summary>
    private void Retire() => _retired = true;

    /// <summary>The worker retired after a read it could not cut off (see <see cref="Retire"/>); reads need a new one.</summary>
    public bool Retired => _retired;

    private void Teardown()
    {
        if (_retired)
        {
            lock (_wakeLock)
            {
                _closed = true; // Nothing is queued past this point.
            }
            foreach (var b in _batches)
            {
                b.DestroyKeys();
            }
            _closing.Clear(); // Freed with the worker.
            _endpoints.Clear();
        }
        if (_worker != 0)
        {
            foreach (var owner in _endpoints.Keys.ToList())
            {
                Drop(owner);
            }
            var until = DateTime.UtcNow + CloseWait;
            while (_closing.Count > 0 && DateTime.UtcNow < until)
            {
                _ = _ucx.Progress(_worker);
                PollClosing();
            }
            foreach (var memh in _maps)
            {
                _ = _ucx.TryUnmap(_context, memh); // Mappings nobody took back: UCX 1.13 aborts on a context that goes with them.
            }
            _maps.Clear();
            lock (_wakeLock)
            {
                _ucx.DestroyWorker(_worker);
                _worker = 0;
                _inFlight = 0; // Gets of a destroyed worker cannot land.
            }
        }
        if (_context != 0 && !_retired)
        {
            // A retired worker's context is left behind: UCX 1.13 asserts (aborting the process) when a context goes
            // while registrations of requests it never finished are in use (its TCP transport's, for one).
            _ucx.Cleanup(_context);
            _context = 0;
        }
        var gone = new ObjectDisposedException(nameof(UcxWorker));
        foreach (var b in _batches)
        {
            b.Finish(b.Failure ?? new P2PException($"P2P read from {b.Owner} stopped: this reader's UCX worker was reset after a read it could not cut off"));
        }
        _batches.Clear();
        while (_commands.TryDequeue(out var command))
        {
            command.Refuse(gone);
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _stopping = true;
        StopRequested?.Invoke();
        Wake();
        _thread.Join();
        _self.Free();
    }

    private const short PollIn = 1;

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(PollFd* fds, nuint count, int timeoutMs);
}

/// <summary>One get of a batch: <see cref="Length"/> bytes at <see cref="Remote"/> in the owner (opened by remote key <see cref="Key"/>) to <see cref="Local"/>.</summary>
internal readonly record struct UcxGet(int Key, ulong Remote, nint Local, long Length);
