namespace CheckpointEngine.Server;

/// <summary>An operation was refused because another one runs on this rank (the HTTP API answers 409).</summary>
public sealed class ServerBusyException(int rank, string running, string refused)
    : CheckpointEngineException($"rank {rank} is busy with {running}; {refused} must wait until it has finished")
{
    /// <summary>What runs ("an update of 'x'").</summary>
    public string Running { get; } = running;
}
