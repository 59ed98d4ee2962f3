namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>A store view that puts every key under a prefix.</summary>
internal sealed class PrefixStore(IStore inner, string prefix) : IStore
{
    private string K(string key) => prefix + key;

    public Task SetAsync(string key, byte[] value, CancellationToken ct = default) => inner.SetAsync(K(key), value, ct);

    public Task<byte[]?> GetAsync(string key, CancellationToken ct = default) => inner.GetAsync(K(key), ct);

    public Task<byte[][]> WaitGetAsync(IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default) =>
        inner.WaitGetAsync(keys.Select(K).ToList(), timeout, ct);

    public Task<long> AddAsync(string key, long delta, CancellationToken ct = default) => inner.AddAsync(K(key), delta, ct);

    public Task<(bool Swapped, byte[]? Current)> CompareAndSetAsync(string key, byte[]? expected, byte[] desired, CancellationToken ct = default) =>
        inner.CompareAndSetAsync(K(key), expected, desired, ct);

    public Task<bool> DeleteAsync(string key, CancellationToken ct = default) => inner.DeleteAsync(K(key), ct);

    public Task<int> DeletePrefixAsync(string p, CancellationToken ct = default) => inner.DeletePrefixAsync(K(p), ct);

    public IStore WithPrefix(string more) => new PrefixStore(inner, K(more));
}
