namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>The rendezvous store could not be reached, refused us, or a wait on it failed.</summary>
public class RendezvousException(string message, Exception? inner = null) : CheckpointEngineException(message, inner);

/// <summary>A wait on the store ended because a rank's connection dropped: that rank is gone.</summary>
public sealed class PeerDiedException(int rank, string reason)
    : RendezvousException($"rank {rank} died: {reason}")
{
    public int Rank { get; } = rank;

    public string Reason { get; } = reason;
}

/// <summary>A wait on the store passed its deadline; <see cref="MissingKeys"/> never appeared.</summary>
public sealed class StoreTimeoutException(string message, IReadOnlyList<string> missingKeys, Exception? inner = null)
    : RendezvousException(message, inner)
{
    public IReadOnlyList<string> MissingKeys { get; } = missingKeys;
}
