using System.Text.Json.Serialization;

namespace CheckpointEngine.Worker;

/// <summary>
/// The first frame on a worker connection, from the worker: the session key of the ticket it was
/// handed. The parameter server reads at most <see cref="MaxFrame"/> bytes of it, and answers a wrong
/// key with an abort and a closed connection. <see cref="Wants"/>: a second frame follows with the
/// worker's <see cref="WorkerWants"/> (read only once the key is right). <see cref="Segments"/>: the worker maps the further
/// shared-memory segments an attach may name and reads tensors out of whichever a load says (see <see cref="AttachMessage.Segments"/>).
/// <see cref="Strided"/>: the worker takes a part of one slice along a dimension past the first where it lies in its whole tensor, row
/// by row (see <see cref="WireTensor.Pitch"/>), instead of packed; workers that do not say so get packed parts.
/// <see cref="Prepares"/>: the worker takes a session that only prepares (see <see cref="AttachMessage.Prepare"/>).
/// </summary>
public sealed record WorkerHello(
    [property: JsonPropertyName("session")] string Session,
    [property: JsonPropertyName("wants")] bool Wants = false,
    [property: JsonPropertyName("segments")] bool Segments = false,
    [property: JsonPropertyName("strided")] bool Strided = false,
    [property: JsonPropertyName("prepares")] bool Prepares = false)
{
    /// <summary>The largest hello frame the parameter server reads.</summary>
    public const int MaxFrame = 4 << 10;
}
