using CheckpointEngine.Interop.Ucx;

namespace CheckpointEngine.Runtime.P2P;

internal sealed partial class UcxWorker
{
    /// <summary>One owner's gets of one read, stepped by the progress thread only (except <see cref="Abort"/>).</summary>
    internal sealed class Batch(UcxWorker worker, string owner, byte[] address, IReadOnlyList<byte[]> keys, IReadOnlyList<UcxGet> gets, DateTime deadline, CancellationToken ct)
    {
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly List<nint> _inflight = [];
        private nint[] _rkeys = [];
        private nint _ep;
        private int _next;
        private long _offset;
        private Exception? _failure;
        private DateTime _failedAt;
        private volatile string? _abort;
        private int _inflightCount;

        public string Owner => owner;

        /// <summary>Why the batch failed, once it has.</summary>
        public Exception? Failure => _failure;

        public Task Completion => _done.Task;

        /// <summary>Fails the batch (from any thread): gets in flight are cut off, and it completes once none is.</summary>
        public void Abort(string why)
        {
            _abort = why;
            worker.Wake();
        }

        /// <summary>Connects (or reuses the endpoint) and unpacks the remote keys.</summary>
        public void Open()
        {
            _ep = worker.Endpoint(owner, address);
            _rkeys = new nint[keys.Count];
            for (var i = 0; i < keys.Count; i++)
            {
                _rkeys[i] = worker._ucx.UnpackRkey(_ep, keys[i]);
            }
        }

        public DateTime Deadline => deadline;

        /// <summary>Gets issued and not completed yet (for tests: none once <see cref="Completion"/> ended).</summary>
        public int InFlight => Volatile.Read(ref _inflightCount);

        /// <summary>Polls, issues more gets, watches the deadline; <paramref name="done"/> once the batch completed. True when anything changed.</summary>
        public bool Step(out bool done)
        {
            var ucx = worker._ucx;
            var changed = false;
            if (_failure is null)
            {
                Fail(_abort is { } why ? new P2PException(why)
                    : worker._stopping ? new P2PException($"P2P read from {owner} stopped: this P2P store is closing")
                    : ct.IsCancellationRequested ? new OperationCanceledException(ct)
                    : DateTime.UtcNow > deadline ? new P2PException($"P2P owner {owner} did not send its data within the deadline")
                    : null);
            }
            for (var i = _inflight.Count - 1; i >= 0; i--)
            {
                var status = ucx.Status(_inflight[i]);
                if (status == Ucx.InProgress)
                {
                    continue;
                }
                ucx.Free(_inflight[i]);
                _inflight.RemoveAt(i);
                changed = true;
                if (status != Ucx.Ok)
                {
                    Fail(new P2PException($"P2P read from {owner} failed: {ucx.StatusName(status)} (did the owner exit?)"));
                }
            }
            while (_failure is null && _inflight.Count < Window && _next < gets.Count)
            {
                var g = gets[_next];
                var n = Math.Min(ChunkBytes, g.Length - _offset);
                changed = true;
                try
                {
                    if (ucx.Get(_ep, g.Local + (nint)_offset, n, g.Remote + (ulong)_offset, _rkeys[g.Key]) is var request and not 0)
                    {
                        _inflight.Add(request);
                    }
                }
                catch (UcxException e)
                {
                    Fail(new P2PException($"P2P read from {owner} failed: {e.Message}", e));
                    break;
                }
                _offset += n;
                if (_offset == g.Length)
                {
                    (_next, _offset) = (_next + 1, 0);
                }
            }
            Volatile.Write(ref _inflightCount, _inflight.Count);
            if (_inflight.Count > 0 && _failure is not null && DateTime.UtcNow - _failedAt >= StuckWait)
            {
                worker.Retire(); // Gets nothing could stop: only destroying the worker keeps their replies out of the destination.
            }
            done = _inflight.Count == 0 && (_failure is not null || _next == gets.Count);
            if (done)
            {
                Finish(_failure);
            }
            return changed || done;
        }

        private void Fail(Exception? failure)
        {
            if (failure is null || _failure is not null)
            {
                return;
            }
            (_failure, _failedAt) = (failure, DateTime.UtcNow);
            foreach (var request in _inflight)
            {
                worker._ucx.Cancel(worker._worker, request);
            }
            // Closing the endpoint at once completes the gets still in flight (with an error); the batch
            // completes only when every one has, so nothing writes into the destination afterwards.
            worker.Drop(owner);
        }

        /// <summary>Frees the remote keys (on the progress thread, while the worker exists).</summary>
        public void DestroyKeys()
        {
            foreach (var rkey in _rkeys.Where(k => k != 0))
            {
                worker._ucx.DestroyRkey(rkey);
            }
            _rkeys = [];
        }

        /// <summary>Frees the remote keys and completes the task.</summary>
        public void Finish(Exception? failure)
        {
            DestroyKeys();
            if (failure is null)
            {
                _done.TrySetResult();
            }
            else
            {
                _done.TrySetException(failure);
            }
        }
    }
}
