namespace CheckpointEngine.Cli.Bench;

/// <summary>One process of a soak and its resident memory (KiB) after each round, round 1 first.</summary>
internal sealed record SoakProcess(string Name, int Pid, IReadOnlyList<ResidentMemory> Samples)
{
    /// <summary>VmRSS after each round, KiB.</summary>
    public IReadOnlyList<long> RssKiB => [.. Samples.Select(s => s.Total)];

    public long StartKiB => Samples.Count > 0 ? Samples[0].Total : 0;

    public long EndKiB => Samples.Count > 0 ? Samples[^1].Total : 0;

    /// <summary>Growth of VmRSS in KiB per round: the least-squares slope over rounds <paramref name="first"/>..<paramref name="last"/> (1-based, inclusive).</summary>
    public double Slope(int first, int last) => Slope(first, last, s => s.Total);

    /// <summary>The same for one part of it (anonymous, file, shared).</summary>
    public double Slope(int first, int last, Func<ResidentMemory, long> part) =>
        LeastSquaresSlope([.. Samples.Skip(first - 1).Take(last - first + 1).Select(s => (double)part(s))]);

    /// <summary>The slope of the line that fits <paramref name="ys"/> (at x = 0, 1, 2, ...) best; NaN for fewer than two points.</summary>
    public static double LeastSquaresSlope(IReadOnlyList<double> ys)
    {
        ArgumentNullException.ThrowIfNull(ys);
        var n = ys.Count;
        if (n < 2)
        {
            return double.NaN;
        }
        var meanX = (n - 1) / 2.0;
        var meanY = ys.Average();
        double sxy = 0, sxx = 0;
        for (var i = 0; i < n; i++)
        {
            sxy += (i - meanX) * (ys[i] - meanY);
            sxx += (i - meanX) * (i - meanX);
        }
        return sxy / sxx;
    }
}
