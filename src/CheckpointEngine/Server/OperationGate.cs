namespace CheckpointEngine.Server;

/// <summary>
/// One operation at a time on a parameter server's checkpoints and device buffers (an update, a metas
/// gather, an unregistration): a second one is refused at once with <see cref="ServerBusyException"/>
/// naming what runs, rather than queued behind a collective that may take minutes.
/// </summary>
internal sealed class OperationGate(int rank) : IDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private volatile string? _running;
    private int _closed;

    /// <summary>What runs now ("an update of 'x'"), or null.</summary>
    public string? Running => _running;

    /// <exception cref="ServerBusyException">Another operation runs.</exception>
    /// <exception cref="ObjectDisposedException">The server is closing.</exception>
    public Scope Enter(string operation)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _closed) != 0, typeof(ParameterServer));
        if (!_gate.Wait(0))
        {
            throw new ServerBusyException(rank, _running ?? "another operation", operation);
        }
        _running = operation;
        return new Scope(this);
    }

    /// <summary>
    /// Refuses new operations and waits up to <paramref name="wait"/> for the running one to end. False: it
    /// still runs, and what it uses must not be freed.
    /// </summary>
    public async Task<bool> CloseAsync(TimeSpan wait)
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return false;
        }
        return await _gate.WaitAsync(wait).ConfigureAwait(false);
    }

    /// <summary>After a successful <see cref="CloseAsync"/> only.</summary>
    public void Dispose() => _gate.Dispose();

    private void Leave()
    {
        _running = null;
        _gate.Release();
    }

    /// <summary>Ends the operation when disposed.</summary>
    public readonly struct Scope(OperationGate gate) : IDisposable
    {
        public void Dispose() => gate.Leave();
    }
}
