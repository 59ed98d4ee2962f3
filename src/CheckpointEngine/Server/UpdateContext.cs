using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// What a trigger gets: the rank calling it and every rank's worker socket by device id. The trigger
/// tells the inference engine to connect (vLLM: POST /collective_rpc "update_weights_from_ipc"); it is
/// called on every rank, and usually only the first rank of each inference group acts.
/// </summary>
public sealed record UpdateContext(string Checkpoint, int Rank, IReadOnlyList<WorkerSocket> Sockets);

/// <summary>
/// What the worker of one rank's device needs to receive this update: the ticket (the socket address
/// and this update's session key, see <see cref="WorkerTicket"/>). A secret: hand it to the engine only.
/// </summary>
public sealed record WorkerSocket(int Rank, string DeviceId, WorkerTicket Ticket);
