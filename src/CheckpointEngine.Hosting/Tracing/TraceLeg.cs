namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// One bucket's bytes over one data link between host leaders (the broadcast chain), seen from both ends: the span is the
/// receiver's, from its first chunk to its last, in microseconds from the trace's origin. A slow link shows at both ends (its
/// sender blocks, its receiver waits); one upstream makes only receivers wait, one downstream only senders block; so a leg's
/// rate is its bytes over the shorter of the two.
/// </summary>
internal sealed record TraceLeg(int Bucket, int From, int To, string FromHost, string ToHost, long Bytes, double StartUs, double DurationUs,
    TimeSpan SenderBlocked, TimeSpan ReceiverWaited)
{
    /// <summary>"10.0.0.1 → 10.0.0.2": legs between the same hosts share a track.</summary>
    public string Link => $"{FromHost} → {ToHost}";

    /// <summary>Bytes per second over the shorter of the two ends' times (infinite when neither end waited).</summary>
    public static double Rate(long bytes, TimeSpan senderBlocked, TimeSpan receiverWaited) =>
        TimeSpan.FromTicks(Math.Min(senderBlocked.Ticks, receiverWaited.Ticks)) is { Ticks: > 0 } t ? bytes / t.TotalSeconds : double.PositiveInfinity;

    /// <summary>Per link over the whole update: bytes, both ends' times and the rate, slowest first.</summary>
    public static IReadOnlyList<(string Link, long Bytes, TimeSpan SenderBlocked, TimeSpan ReceiverWaited, double Rate)> Totals(IEnumerable<TraceLeg> legs) =>
        [.. legs.GroupBy(l => l.Link, StringComparer.Ordinal)
            .Select(g => (g.Key, Bytes: g.Sum(l => l.Bytes), Sent: Sum(g, l => l.SenderBlocked), Received: Sum(g, l => l.ReceiverWaited)))
            .Select(t => (t.Key, t.Bytes, t.Sent, t.Received, Rate(t.Bytes, t.Sent, t.Received)))
            .OrderBy(t => t.Item5).ThenBy(t => t.Key, StringComparer.Ordinal)];

    private static TimeSpan Sum(IEnumerable<TraceLeg> legs, Func<TraceLeg, TimeSpan> time) => TimeSpan.FromTicks(legs.Sum(l => time(l).Ticks));
}
