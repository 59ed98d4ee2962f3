namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>
/// The rendezvous key-value store as ranks see it. Every call has a deadline: waits take one
/// explicitly, other calls fail when the store does not answer within the client's request timeout.
/// </summary>
public interface IStore
{
    Task SetAsync(string key, byte[] value, CancellationToken ct = default);

    /// <summary>The value, or null when the key is absent (does not wait).</summary>
    Task<byte[]?> GetAsync(string key, CancellationToken ct = default);

    /// <summary>Waits until every key exists and returns their values in order. Throws <see cref="StoreTimeoutException"/> or <see cref="PeerDiedException"/>.</summary>
    Task<byte[][]> WaitGetAsync(IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default);

    /// <summary>
    /// One member's turn of an all-gather in one round trip: sets <paramref name="key"/>, waits as <see cref="WaitGetAsync"/> for
    /// <paramref name="keys"/>, and once they are all there deletes <paramref name="drop"/> (null: none), the member's key of the previous call.
    /// </summary>
    Task<byte[][]> GatherAsync(string key, byte[] value, string? drop, IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default);

    /// <summary>Atomically adds to a 64-bit counter (absent counts as 0) and returns the new value.</summary>
    Task<long> AddAsync(string key, long delta, CancellationToken ct = default);

    /// <summary>Sets <paramref name="desired"/> if the value equals <paramref name="expected"/> (null: if absent). Returns whether it swapped and the value now.</summary>
    Task<(bool Swapped, byte[]? Current)> CompareAndSetAsync(string key, byte[]? expected, byte[] desired, CancellationToken ct = default);

    Task<bool> DeleteAsync(string key, CancellationToken ct = default);

    /// <summary>Deletes every key under a prefix; returns how many.</summary>
    Task<int> DeletePrefixAsync(string prefix, CancellationToken ct = default);

    /// <summary>A view in which every key is under <paramref name="prefix"/> (a '/' is added unless it ends in one), so repeated updates and groups never see each other's keys.</summary>
    IStore WithPrefix(string prefix);
}
