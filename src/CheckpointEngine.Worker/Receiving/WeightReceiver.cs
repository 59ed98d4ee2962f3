using System.Net.Sockets;

namespace CheckpointEngine.Worker;

/// <summary>
/// The receiving side of a weight update, for inference hosts: connects to the parameter server of
/// this device, maps the device buffer it names, hands every bucket's tensors to a handler, runs the
/// post-load hook, and answers every message. One call receives one update.
/// </summary>
public static class WeightReceiver
{
    /// <summary>The default for how long the parameter server may stay silent (or take to start listening).</summary>
    public static readonly TimeSpan DefaultIdleTimeout = TimeSpan.FromMinutes(2);

    /// <summary>How long after a failure the receiver waits for the parameter server's abort before it gives up on it.</summary>
    public static readonly TimeSpan AbortWait = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Unmaps the device buffers kept between updates. Receivers keep the last buffer of each device
    /// mapped, because the next update usually sends the same one.
    /// </summary>
    public static void ReleaseMappings() => SegmentMappings.ReleaseAll();

    private static readonly TimeSpan FirstRetry = TimeSpan.FromMilliseconds(10);
    private static readonly TimeSpan MaxRetry = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// Receives one update with the <paramref name="ticket"/> the parameter server handed the engine
    /// ("address#session", see <see cref="WorkerTicket"/>), retrying the connection until the server
    /// listens. The server must run as this process's user; the session key proves to it that this
    /// connection is the worker of this very update. Returns after "finish" once <paramref name="postLoad"/> has run.
    /// </summary>
    /// <param name="onBucket">Called once per "load", on the receiving task, with views into the buffer.</param>
    /// <param name="postLoad">Run on "finish" (re-quantize, fuse); its failure fails the update.</param>
    /// <param name="idleTimeout">The longest the parameter server may take to listen or to send the next message (default <see cref="DefaultIdleTimeout"/>).</param>
    /// <exception cref="ArgumentException"><paramref name="ticket"/> is not "address#session".</exception>
    /// <exception cref="WeightUpdateAbortedException">The parameter server sent "abort" (also: it refused the session key).</exception>
    /// <exception cref="WeightReceiveException">
    /// The handler or hook failed (its message was sent back as the error), a message was bad (the
    /// error was sent back), the process listening runs as another user, or the parameter server went silent or away.
    /// </exception>
    public static Task<ReceiveSummary> ReceiveAsync(string ticket, BucketHandler onBucket,
        Func<CancellationToken, ValueTask>? postLoad = null, TimeSpan? idleTimeout = null, CancellationToken cancellationToken = default) =>
        ReceiveAsync(ticket, onBucket, postLoad, idleTimeout, connectRetrying: null, cancellationToken);

    /// <param name="arrived">Fault injection (the reference engine's --corrupt-tensor): sees each bucket's views before they are checked and handled.</param>
    internal static Task<ReceiveSummary> ReceiveAsync(string ticket, WorkerWants? wants, BucketHandler onBucket, Func<CancellationToken, ValueTask>? postLoad,
        TimeSpan? idleTimeout, BucketHandler? arrived, bool stridedParts, CancellationToken cancellationToken) =>
        ReceiveAsync(ticket, onBucket, postLoad, idleTimeout, connectRetrying: null, cancellationToken, arrived, wants, stridedParts);

    /// <summary>
    /// As <see cref="ReceiveAsync(string, WorkerWants?, BucketHandler, Func{CancellationToken, ValueTask}?, TimeSpan?, CancellationToken)"/>;
    /// with <paramref name="stridedParts"/> the handler also takes parts where they lie inside their whole tensors (a column slice, in
    /// the owners' memory on one host: <see cref="ReceivedTensor.IsPacked"/> false), so that nothing copies them before the handler
    /// does: it must read such a tensor by <see cref="ReceivedTensor.Row"/> or <see cref="ReceivedTensor.CopyTo(byte*)"/>, not by its span.
    /// </summary>
    public static Task<ReceiveSummary> ReceiveAsync(string ticket, WorkerWants? wants, bool stridedParts, BucketHandler onBucket,
        Func<CancellationToken, ValueTask>? postLoad = null, TimeSpan? idleTimeout = null, CancellationToken cancellationToken = default) =>
        ReceiveAsync(ticket, onBucket, postLoad, idleTimeout, connectRetrying: null, cancellationToken, wants: wants, stridedParts: stridedParts);

    /// <summary>
    /// As <see cref="ReceiveAsync(string, BucketHandler, Func{CancellationToken, ValueTask}?, TimeSpan?, CancellationToken)"/>,
    /// declaring what this worker keeps (see <see cref="WorkerWants"/>); a declaration that does not fit the
    /// checkpoint fails the update on every rank with the reason.
    /// </summary>
    public static Task<ReceiveSummary> ReceiveAsync(string ticket, WorkerWants? wants, BucketHandler onBucket,
        Func<CancellationToken, ValueTask>? postLoad = null, TimeSpan? idleTimeout = null, CancellationToken cancellationToken = default) =>
        ReceiveAsync(ticket, onBucket, postLoad, idleTimeout, connectRetrying: null, cancellationToken, wants: wants);

    /// <param name="connectRetrying">Called with each failed connection attempt before the receiver waits to try again (tests await it instead of sleeping).</param>
    internal static async Task<ReceiveSummary> ReceiveAsync(string ticket, BucketHandler onBucket,
        Func<CancellationToken, ValueTask>? postLoad, TimeSpan? idleTimeout, Action<SocketException>? connectRetrying, CancellationToken cancellationToken,
        BucketHandler? arrived = null, WorkerWants? wants = null, bool stridedParts = false)
    {
        var parsed = WorkerTicket.Parse(ticket);
        ArgumentNullException.ThrowIfNull(onBucket);
        var idle = idleTimeout ?? DefaultIdleTimeout;
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(idle, TimeSpan.Zero, nameof(idleTimeout));
        var socket = await ConnectAsync(parsed.Address, idle, connectRetrying, cancellationToken).ConfigureAwait(false);
        using var session = new ReceiveSession(parsed.Address, socket, onBucket, postLoad, idle) { Arrived = arrived, Strided = stridedParts };
        return await session.RunAsync(parsed.Session, wants, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Connects, retrying with a short backoff while nothing listens yet, until <paramref name="deadline"/> has passed.</summary>
    internal static async Task<Socket> ConnectAsync(string address, TimeSpan deadline, Action<SocketException>? retrying, CancellationToken ct)
    {
        var endpoint = WorkerSockets.EndPoint(address);
        var started = TimeProvider.System.GetTimestamp();
        var delay = FirstRetry;
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            SocketException error;
            try
            {
                using var attempt = CancellationTokenSource.CreateLinkedTokenSource(ct);
                attempt.CancelAfter(Remaining(started, deadline));
                await socket.ConnectAsync(endpoint, attempt.Token).ConfigureAwait(false);
                return socket;
            }
            catch (SocketException e)
            {
                socket.Dispose();
                error = e;
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                socket.Dispose();
                throw new WeightReceiveException($"could not connect to the parameter server at {address} within {deadline.TotalSeconds:0.###} s");
            }
            catch
            {
                socket.Dispose();
                throw;
            }
            var left = Remaining(started, deadline);
            if (left <= TimeSpan.Zero)
            {
                throw new WeightReceiveException(
                    $"no parameter server listening at {address} within {deadline.TotalSeconds:0.###} s ({error.SocketErrorCode}: {error.Message})", error);
            }
            retrying?.Invoke(error);
            await Task.Delay(delay < left ? delay : left, ct).ConfigureAwait(false);
            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetry.Ticks));
        }
    }

    private static TimeSpan Remaining(long started, TimeSpan deadline)
    {
        var left = deadline - TimeProvider.System.GetElapsedTime(started);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }
}
