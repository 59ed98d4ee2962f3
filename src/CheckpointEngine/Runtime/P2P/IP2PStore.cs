namespace CheckpointEngine.Runtime.P2P;

/// <summary>
/// One-sided reads of other ranks' registered host memory, for P2P updates: an owner registers its
/// buffers under names and publishes <see cref="Address"/>; a reader fetches byte ranges into its own
/// memory without the owner's update path doing anything. Built-in: <see cref="TcpP2PStore"/>; one-sided reads over RDMA and shared memory: <see cref="UcxP2PStore"/>.
/// </summary>
public interface IP2PStore : IDisposable
{
    /// <summary>Where readers reach this rank's buffers.</summary>
    string Address { get; }

    /// <summary>How this store reads ("tcp" or "ucx"), for reports.</summary>
    string Transport { get; }

    void Register(string name, nint address, long length);

    void Unregister(string name);

    /// <summary>Reads every range from the store at <paramref name="owner"/>, in one batch, into local memory.</summary>
    /// <exception cref="P2PException">The owner refused, vanished or did not answer within <paramref name="timeout"/>.</exception>
    Task ReadAsync(string owner, IReadOnlyList<P2PRead> reads, TimeSpan timeout, CancellationToken ct = default);

    /// <summary>Opens what reads from <paramref name="owner"/> go through (connections), so that the first read does not wait for it. Optional.</summary>
    /// <exception cref="P2PException">The owner refused or did not answer within <paramref name="timeout"/>.</exception>
    Task ConnectAsync(string owner, TimeSpan timeout, CancellationToken ct = default) => Task.CompletedTask;
}

/// <summary>Copy <see cref="Length"/> bytes at <see cref="Offset"/> of the owner's buffer <see cref="Buffer"/> to <see cref="Destination"/>.</summary>
public readonly record struct P2PRead(string Buffer, long Offset, long Length, nint Destination);

/// <summary>A P2P read failed; the message names the owner and why.</summary>
public sealed class P2PException(string message, Exception? inner = null) : CheckpointEngineException(message, inner);
