using CheckpointEngine.Hosting.Tracing;
using CheckpointEngine.Server;

namespace CheckpointEngine.Tests.Tracing;

/// <summary>Synthetic update timings with known numbers (milliseconds in, microseconds out).</summary>
internal static class TraceSamples
{
    public static readonly DateTimeOffset Start = new(2025, 1, 1, 12, 0, 0, TimeSpan.Zero);

    public static BucketTiming B(int index, int owner, long bytes, double s0, double s1, double b0, double b1, double r0, double r1) =>
        new(index, owner, bytes, Ms(s0), Ms(s1), Ms(b0), Ms(b1), Ms(r0), Ms(r1));

    public static TimeSpan Ms(double ms) => TimeSpan.FromTicks((long)Math.Round(ms * TimeSpan.TicksPerMillisecond));

    /// <summary>
    /// Two ranks, two buckets (rank 0 owns bucket 0, rank 1 bucket 1); rank 1 started 1 ms after rank 0.
    /// Stage sums: rank 0 h2d 2.0005 ms, broadcast 4, reload 3.5; rank 1 h2d 4, broadcast 4, reload 4.5 (the busiest).
    /// The pipeline runs from 1 ms (rank 0 stages bucket 0) to 10.5 ms (rank 1's last reload).
    /// </summary>
    public static UpdateTrace TwoRanks(string method = "broadcast") => new("ckpt", method,
    [
        new RankTimeline(0, Start, Ms(12), [B(0, 0, 100, 1, 3.0005, 4, 6, 6.5, 9), B(1, 1, 200, 0, 0, 6, 8, 9, 10)]),
        new RankTimeline(1, Start + Ms(1), Ms(11), [B(0, 0, 100, 0, 0, 3, 5, 5, 8.5), B(1, 1, 200, 0.5, 4.5, 5, 7, 8.5, 9.5)]),
    ]);
}
