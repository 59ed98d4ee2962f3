using System.Text.Json.Serialization;

namespace CheckpointEngine.Worker;

/// <summary>
/// The worker protocol's JSON contracts, generated at compile time: the first frame of a process's first update
/// then costs no reflection over the message types (which took tens of milliseconds on each side of the link).
/// Types outside it still serialize through reflection (see <see cref="WorkerFraming"/>).
/// </summary>
[JsonSerializable(typeof(WorkerMessage))]
[JsonSerializable(typeof(WorkerReply))]
[JsonSerializable(typeof(WorkerHello))]
internal sealed partial class WorkerJson : JsonSerializerContext;
