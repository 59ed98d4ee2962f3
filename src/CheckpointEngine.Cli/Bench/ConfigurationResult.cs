namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// One configuration's updates, each as its slowest rank's result line (the update is over when its
/// last rank is) with each stage's largest sum over the ranks: the warm-up (<see cref="First"/>, the first in fresh rank processes) and the measured
/// <see cref="Samples"/>; and the peak memory seen of each rank process and of this process.
/// A method measured in several ways has a row per <see cref="Case"/> (registration: fresh, pooled, in place;
/// collective: shared-memory ring, TCP chain); their lines carry only bytes and seconds.
/// </summary>
internal sealed record ConfigurationResult(string Method, int Ranks, long Size, long Bytes, ResultLine? First, IReadOnlyList<ResultLine> Samples,
    IReadOnlyDictionary<int, long> RankPeaks, long? HostPeak, string? Case = null)
{
    /// <summary>The row's name: the method, and its case in parentheses.</summary>
    /// <summary>The slowest rank's prepare before the first update (see <see cref="BenchSettings.Prepare"/>), or null.</summary>
    public ResultLine? Prepared { get; init; }

    public string Label => Case is null ? Method : $"{Method} ({Case})";

    public Spread Seconds => Spread.Of(Samples.Select(s => s.Seconds));

    /// <summary>Bytes each worker received over the median update time.</summary>
    public double GbpsPerWorker => Bytes / Math.Max(Seconds.Median, 1e-12) / 1e9;

    public double SecondsPerGiB => Seconds.Median / (Bytes / (double)(1L << 30));

    public double Stage => Spread.Of(Samples.Select(s => s.Stage)).Median;

    public double Broadcast => Spread.Of(Samples.Select(s => s.Broadcast)).Median;

    public double Reload => Spread.Of(Samples.Select(s => s.Reload)).Median;

    /// <summary>The most bytes a rank received from other hosts in an update (the largest over the ranks, median over the samples).</summary>
    public long NetworkBytes => Samples.Count == 0 ? 0 : (long)Spread.Of(Samples.Select(s => (double)s.Network)).Median;

    public int Buckets => Samples.Count == 0 ? 0 : Samples.Max(s => s.Buckets);
}
