namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>
/// A store view that puts every key under a prefix ending in '/', so sibling views ("a" and "ab")
/// never share keys. Waits report missing keys as this view names them.
/// </summary>
internal sealed class PrefixStore : IStore
{
    private readonly IStore _inner;
    private readonly string _prefix;

    public PrefixStore(IStore inner, string prefix)
    {
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        _inner = inner;
        _prefix = prefix.EndsWith('/') ? prefix : prefix + "/";
    }

    private string K(string key) => _prefix + key;

    public Task SetAsync(string key, byte[] value, CancellationToken ct = default) => _inner.SetAsync(K(key), value, ct);

    public Task<byte[]?> GetAsync(string key, CancellationToken ct = default) => _inner.GetAsync(K(key), ct);

    public Task<byte[][]> WaitGetAsync(IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default) =>
        Unprefixed(_inner.WaitGetAsync(keys.Select(K).ToList(), timeout, ct));

    public Task<byte[][]> GatherAsync(string key, byte[] value, string? drop, IReadOnlyList<string> keys, TimeSpan timeout, CancellationToken ct = default) =>
        Unprefixed(_inner.GatherAsync(K(key), value, drop is null ? null : K(drop), keys.Select(K).ToList(), timeout, ct));

    /// <summary>A wait's values, or its timeout naming the missing keys as this view names them.</summary>
    private async Task<byte[][]> Unprefixed(Task<byte[][]> wait)
    {
        try
        {
            return await wait.ConfigureAwait(false);
        }
        catch (StoreTimeoutException e)
        {
            var mine = e.MissingKeys.Select(k => k.StartsWith(_prefix, StringComparison.Ordinal) ? k[_prefix.Length..] : k).ToList();
            throw new StoreTimeoutException(e.Message, mine, e);
        }
    }

    public Task<long> AddAsync(string key, long delta, CancellationToken ct = default) => _inner.AddAsync(K(key), delta, ct);

    public Task<(bool Swapped, byte[]? Current)> CompareAndSetAsync(string key, byte[]? expected, byte[] desired, CancellationToken ct = default) =>
        _inner.CompareAndSetAsync(K(key), expected, desired, ct);

    public Task<bool> DeleteAsync(string key, CancellationToken ct = default) => _inner.DeleteAsync(K(key), ct);

    public Task<int> DeletePrefixAsync(string p, CancellationToken ct = default) => _inner.DeletePrefixAsync(K(p), ct);

    public IStore WithPrefix(string more)
    {
        ArgumentException.ThrowIfNullOrEmpty(more);
        return new PrefixStore(_inner, K(more));
    }
}
