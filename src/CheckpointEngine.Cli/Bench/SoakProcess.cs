namespace CheckpointEngine.Cli.Bench;

/// <summary>One process of a soak and its resident memory (VmRSS, KiB) after each round, round 1 first.</summary>
internal sealed record SoakProcess(string Name, int Pid, IReadOnlyList<long> RssKiB)
{
    public long StartKiB => RssKiB.Count > 0 ? RssKiB[0] : 0;

    public long EndKiB => RssKiB.Count > 0 ? RssKiB[^1] : 0;

    /// <summary>Growth in KiB per round: the least-squares slope over rounds <paramref name="first"/>..<paramref name="last"/> (1-based, inclusive).</summary>
    public double Slope(int first, int last) => LeastSquaresSlope(RssKiB.Skip(first - 1).Take(last - first + 1).Select(v => (double)v).ToList());

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
