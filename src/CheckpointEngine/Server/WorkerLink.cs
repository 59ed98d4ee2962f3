using System.Net.Sockets;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// The parameter server's end of the worker protocol: it listens on the device's socket for the
/// colocated inference worker, which connects when the engine is told to receive an update. The
/// socket's name is public, so a connection counts only when the peer runs as this process's user
/// (SO_PEERCRED) and its first frame presents this update's session key (see <see cref="WorkerTicket"/>);
/// anything else is closed and the wait for the real worker goes on.
/// </summary>
internal sealed class WorkerLink : IDisposable
{
    /// <summary>How long a same-user connection may take to present its session key.</summary>
    private static readonly TimeSpan HelloTimeout = TimeSpan.FromSeconds(5);

    private readonly Socket _listener;
    private int _refused;
    private string? _lastRefusal;

    public WorkerLink(string deviceId, string? socketDirectory)
    {
        Address = WorkerSockets.AddressFor(deviceId, socketDirectory);
        DeviceId = deviceId;
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            if (!Address.StartsWith('@') && File.Exists(Address) && !IsServed(Address))
            {
                File.Delete(Address); // A socket file left by a dead process (a live one answers, and binding then fails below).
            }
            _listener.Bind(WorkerSockets.EndPoint(Address));
            _listener.Listen(16);
        }
        catch (SocketException e)
        {
            _listener.Dispose();
            throw new CheckpointEngineException(
                $"cannot listen for the worker of device '{deviceId}' on {Address}: {e.Message}; another process (another parameter server?) holds it: " +
                $"choose another device id with {Runtime.RankConfig.DeviceIdVariable} (e.g. 'host-{{local_rank}}-b') for this world and its workers", e);
        }
    }

    public string Address { get; }

    private static bool IsServed(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public string DeviceId { get; }

    /// <summary>Connections refused so far (another user, a wrong or missing session key), and the last reason.</summary>
    public (int Count, string? Last) Refused => (Volatile.Read(ref _refused), _lastRefusal);

    /// <summary>
    /// Waits for this update's worker to connect and prove it holds <paramref name="ticket"/>; fails
    /// early if <paramref name="trigger"/> (telling the engine) fails first.
    /// </summary>
    public async Task<WorkerConnection> AcceptAsync(WorkerTicket ticket, Task trigger, TimeSpan timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        var accept = NextWorkerAsync(ticket, cts.Token);
        var first = await Task.WhenAny(accept, trigger).ConfigureAwait(false);
        if (first == trigger && trigger.IsFaulted)
        {
            await cts.CancelAsync().ConfigureAwait(false);
            await accept.ContinueWith(static _ => { }, TaskScheduler.Default).ConfigureAwait(false);
            throw new UpdateFailedException($"telling the inference engine to receive failed: {trigger.Exception!.InnerException!.Message}", trigger.Exception.InnerException);
        }
        try
        {
            return await accept.ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            var (count, last) = Refused;
            var refusals = count == 0 ? "" : $" (refused {count} connection(s) so far; the last: {last})";
            throw new UpdateFailedException($"the worker of device '{DeviceId}' did not connect to {Address} within {timeout.TotalSeconds:F0} s{refusals}");
        }
    }

    private async Task<WorkerConnection> NextWorkerAsync(WorkerTicket ticket, CancellationToken ct)
    {
        while (true)
        {
            var socket = await _listener.AcceptAsync(ct).ConfigureAwait(false);
            string? refusal;
            WorkerConnection? worker = null;
            try
            {
                (refusal, var said) = await CheckAsync(socket, ticket, ct).ConfigureAwait(false);
                if (said is not null)
                {
                    worker = new WorkerConnection(socket, DeviceId) { MapsSegments = said.Segments, TakesStrided = said.Strided, Prepares = said.Prepares };
                    if (said.Wants)
                    {
                        await worker.ReadWantsAsync(HelloTimeout, ct).ConfigureAwait(false);
                    }
                    return worker;
                }
            }
            catch
            {
                if (worker is null)
                {
                    socket.Dispose();
                }
                worker?.Dispose();
                throw;
            }
            socket.Dispose();
            _lastRefusal = refusal;
            Interlocked.Increment(ref _refused);
        }
    }

    /// <summary>
    /// The hello of this update's worker (whether it declares wants next, maps further segments, takes strided parts), else why not.
    /// Reads at most a hello frame, under <see cref="HelloTimeout"/>.
    /// </summary>
    private async Task<(string? Refusal, WorkerHello? Hello)> CheckAsync(Socket socket, WorkerTicket ticket, CancellationToken ct)
    {
        if (PeerCredentials.Refusal(socket, "a process connecting") is { } refusal)
        {
            return (refusal, null);
        }
        using var stream = new NetworkStream(socket, ownsSocket: false);
        using var hello = CancellationTokenSource.CreateLinkedTokenSource(ct);
        hello.CancelAfter(HelloTimeout);
        try
        {
            var frame = await WorkerFraming.ReadFrameAsync(stream, WorkerHello.MaxFrame, hello.Token).ConfigureAwait(false);
            if (frame is null)
            {
                return ("a connection closed before presenting a session key", null);
            }
            var said = WorkerFraming.Decode<WorkerHello>(frame);
            if (ticket.Accepts(said.Session))
            {
                return (null, said);
            }
            const string why = "the session key is not this update's (a worker of an earlier update, or a stale ticket)";
            await WorkerFraming.WriteAsync<WorkerMessage>(stream, new AbortMessage($"device '{DeviceId}': {why}"), hello.Token).ConfigureAwait(false);
            return (why, null);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return ($"a connection presented no session key within {HelloTimeout.TotalSeconds:F0} s", null);
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException)
        {
            return ($"a connection sent no valid hello: {e.Message}", null);
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
