namespace CheckpointEngine.Checkpoints;

/// <summary>
/// Splits a checkpoint across the ranks of a parameter-server group so that each rank registers a
/// share of about equal bytes. Both splits are deterministic: every rank computes the same answer
/// from the same inputs without talking to the others.
/// </summary>
public static class CheckpointSplit
{
    /// <summary>Whole files per rank, balanced by file size (largest first onto the least-loaded rank).</summary>
    public static IReadOnlyList<FileSelection> ByFile(IReadOnlyList<string> files, int rank, int worldSize)
    {
        CheckRank(rank, worldSize);
        var sized = files.Distinct(StringComparer.Ordinal).Select(f => (Item: f, Bytes: new FileInfo(f).Length));
        return Balance(sized, worldSize, StringComparer.Ordinal)[rank].Order(StringComparer.Ordinal).Select(f => new FileSelection(f)).ToList();
    }

    /// <summary>Tensors per rank, balanced by tensor size; files are read only for the chosen tensors.</summary>
    public static IReadOnlyList<FileSelection> ByTensor(Checkpoint checkpoint, int rank, int worldSize)
    {
        CheckRank(rank, worldSize);
        var sized = checkpoint.AllTensors().Select(e => (Item: (e.File.Path, e.Tensor.Name), Bytes: e.Tensor.ByteLength));
        return Balance(sized, worldSize, ByPathThenName)[rank]
            .GroupBy(x => x.Path, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => new FileSelection(g.Key, g.Select(x => x.Name).Order(StringComparer.Ordinal).ToList()))
            .ToList();
    }

    private static readonly Comparer<(string Path, string Name)> ByPathThenName = Comparer<(string Path, string Name)>.Create((a, b) =>
    {
        var byPath = string.CompareOrdinal(a.Path, b.Path);
        return byPath != 0 ? byPath : string.CompareOrdinal(a.Name, b.Name);
    });

    /// <summary>
    /// Longest-processing-time greedy: each item, largest first (ties by <paramref name="keyOrder"/>), goes to the
    /// least-loaded rank (ties to the lowest). The key order must not depend on the culture, or ranks on
    /// differently configured hosts could compute different splits.
    /// </summary>
    internal static List<T>[] Balance<T>(IEnumerable<(T Item, long Bytes)> items, int worldSize, IComparer<T> keyOrder)
    {
        var shares = Enumerable.Range(0, worldSize).Select(_ => new List<T>()).ToArray();
        var loads = new long[worldSize];
        foreach (var (item, bytes) in items.OrderByDescending(x => x.Bytes).ThenBy(x => x.Item, keyOrder))
        {
            var target = 0;
            for (var r = 1; r < worldSize; r++)
            {
                if (loads[r] < loads[target])
                {
                    target = r;
                }
            }
            shares[target].Add(item);
            loads[target] += bytes;
        }
        return shares;
    }

    private static void CheckRank(int rank, int worldSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, worldSize);
    }
}
