using System.Net.Sockets;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>One update's conversation with the worker: a message, then its reply, under a deadline.</summary>
internal sealed class WorkerConnection(Socket socket, string deviceId) : IDisposable
{
    private readonly NetworkStream _stream = new(socket, ownsSocket: true);

    public string DeviceId => deviceId;

    /// <summary>What the worker declared it keeps (null: everything, as a worker that declares nothing).</summary>
    public WorkerWants? Wants { get; private set; }

    /// <summary>Its hello said it maps the further segments an attach names (the owners' registered memory, host backend).</summary>
    public bool MapsSegments { get; init; }

    /// <summary>Its hello said it takes a part of one slice along a later dimension in place, as rows a pitch apart (see <see cref="WireTensor.Pitch"/>).</summary>
    public bool TakesStrided { get; init; }

    /// <summary>Its hello said it takes a session that only prepares (see <see cref="AttachMessage.Prepare"/>).</summary>
    public bool Prepares { get; init; }

    /// <summary>Why its declaration could not be read (the update then fails at attach on every rank).</summary>
    public string? WantsError { get; private set; }

    /// <summary>Reads the worker's wants frame, which follows a hello that announced it.</summary>
    public async Task ReadWantsAsync(TimeSpan timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        try
        {
            var frame = await WorkerFraming.ReadFrameAsync(_stream, cts.Token).ConfigureAwait(false);
            Wants = frame is null ? throw new InvalidDataException("the connection closed before the wants") : WorkerWants.Parse(frame);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            WantsError = $"the worker of device '{deviceId}' announced its wants but did not send them within {timeout.TotalSeconds:F0} s";
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException)
        {
            WantsError = $"the worker of device '{deviceId}' sent wants that cannot be read: {e.Message}";
        }
    }

    /// <summary>Sends a message; returns null when the worker says ok, else its error text. Losing the worker is an error too.</summary>
    public async Task<string?> CallAsync(WorkerMessage message, TimeSpan timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        try
        {
            await WorkerFraming.WriteAsync(_stream, message, cts.Token).ConfigureAwait(false);
            var reply = await WorkerFraming.ReadAsync<WorkerReply>(_stream, cts.Token).ConfigureAwait(false);
            return reply is null
                ? $"the worker of device '{deviceId}' closed the connection"
                : reply.Ok ? null : reply.Error ?? "the worker failed without saying why";
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return $"the worker of device '{deviceId}' did not answer within {timeout.TotalSeconds:F0} s";
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException)
        {
            return $"lost the worker of device '{deviceId}': {e.Message}";
        }
    }

    /// <summary>Best effort: tells the worker to drop the update, without waiting long for an answer.</summary>
    public async Task AbortAsync(string reason)
    {
        _ = await CallAsync(new AbortMessage(reason), TimeSpan.FromSeconds(5), CancellationToken.None).ConfigureAwait(false);
    }

    public void Dispose() => _stream.Dispose();
}
