using System.Net.Sockets;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// The parameter server's end of the worker protocol: it listens on the device's socket for the
/// colocated inference worker, which connects when the engine is told to receive an update.
/// </summary>
internal sealed class WorkerLink : IDisposable
{
    private readonly Socket _listener;

    public WorkerLink(string deviceId, string? socketDirectory)
    {
        Address = WorkerSockets.AddressFor(deviceId, socketDirectory);
        DeviceId = deviceId;
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            if (!Address.StartsWith('@') && File.Exists(Address))
            {
                File.Delete(Address); // A socket file left by a dead process.
            }
            _listener.Bind(WorkerSockets.EndPoint(Address));
            _listener.Listen(4);
        }
        catch (SocketException e)
        {
            _listener.Dispose();
            throw new CheckpointEngineException(
                $"cannot listen for the worker of device '{deviceId}' on {Address}: {e.Message} (another parameter server for this device?)", e);
        }
    }

    public string Address { get; }

    public string DeviceId { get; }

    /// <summary>Waits for the worker to connect; fails early if <paramref name="trigger"/> (telling the engine) fails first.</summary>
    public async Task<WorkerConnection> AcceptAsync(Task trigger, TimeSpan timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        var accept = _listener.AcceptAsync(cts.Token).AsTask();
        var first = await Task.WhenAny(accept, trigger).ConfigureAwait(false);
        if (first == trigger && trigger.IsFaulted)
        {
            await cts.CancelAsync().ConfigureAwait(false);
            throw new UpdateFailedException($"telling the inference engine to receive failed: {trigger.Exception!.InnerException!.Message}", trigger.Exception.InnerException);
        }
        try
        {
            return new WorkerConnection(await accept.ConfigureAwait(false), DeviceId);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new UpdateFailedException($"the worker of device '{DeviceId}' did not connect to {Address} within {timeout.TotalSeconds:F0} s");
        }
    }

    public void Dispose()
    {
        _listener.Dispose();
        if (!Address.StartsWith('@'))
        {
            File.Delete(Address);
        }
    }
}
