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

        public string Owner => owner;

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

        /// <summary>Polls, issues more gets, watches the deadline; true once the batch completed.</summary>
        public bool Step()
        {
            var ucx = worker._ucx;
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
                if (status != Ucx.Ok)
                {
                    Fail(new P2PException($"P2P read from {owner} failed: {ucx.StatusName(status)} (did the owner exit?)"));
                }
            }
            while (_failure is null && _inflight.Count < Window && _next < gets.Count)
            {
                var g = gets[_next];
                var n = Math.Min(ChunkBytes, g.Length - _offset);
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
            if (_inflight.Count > 0 && (_failure is null || DateTime.UtcNow - _failedAt < CloseWait))
            {
                return false;
            }
            if (_failure is null && _next < gets.Count)
            {
                return false;
            }
            // Requests still in flight CloseWait after their endpoint was closed are left to UCX (never seen on a healthy library).
            Finish(_failure);
            return true;
        }

        private void Fail(Exception? failure)
        {
            if (failure is null || _failure is not null)
            {
                return;
            }
            (_failure, _failedAt) = (failure, DateTime.UtcNow);
            worker.Drop(owner); // Completes the gets in flight (with an error): nothing writes into the destination afterwards.
        }

        /// <summary>Frees the remote keys and completes the task.</summary>
        public void Finish(Exception? failure)
        {
            foreach (var rkey in _rkeys.Where(k => k != 0))
            {
                worker._ucx.DestroyRkey(rkey);
            }
            _rkeys = [];
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
