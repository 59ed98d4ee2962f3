namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// One bucket's bytes over one data link between host leaders (the broadcast chain), seen from both ends: the span is the
/// receiver's, from its first chunk to its last, in microseconds from the trace's origin. A slow link holds up both ends: its
/// sender (blocked sending, then until its last bytes arrive: the kernel's buffers take a few MB off a slow link at once) and
/// its receiver (waiting for bytes). A slow link upstream makes only receivers wait; one downstream makes only senders block
/// (their receiver does not read); so a leg's rate is its bytes over the shorter of the two ends' times.
/// </summary>
/// <param name="SenderTime">Blocked sending, plus from its last send to the receiver's last byte (same clock: exact on one machine, as good as the hosts' clock sync across machines).</param>
/// <param name="ReceiverTime">Waiting for bytes, the header excluded (that is waiting for the sender's turn).</param>
internal sealed record TraceLeg(int Bucket, int From, int To, string FromHost, string ToHost, long Bytes, double StartUs, double DurationUs,
    TimeSpan SenderTime, TimeSpan ReceiverTime)
{
    /// <summary>"10.0.0.1 → 10.0.0.2": legs between the same hosts share a track.</summary>
    public string Link => $"{FromHost} → {ToHost}";

    /// <summary>Bytes per second over the shorter of the two ends' times (infinite when neither end waited).</summary>
    public static double Rate(long bytes, TimeSpan senderTime, TimeSpan receiverTime) =>
        TimeSpan.FromTicks(Math.Min(senderTime.Ticks, receiverTime.Ticks)) is { Ticks: > 0 } t ? bytes / t.TotalSeconds : double.PositiveInfinity;

    /// <summary>Per link over the whole update: bytes, both ends' times and the rate, slowest first.</summary>
    public static IReadOnlyList<(string Link, long Bytes, TimeSpan SenderTime, TimeSpan ReceiverTime, double Rate)> Totals(IEnumerable<TraceLeg> legs) =>
        [.. legs.GroupBy(l => l.Link, StringComparer.Ordinal)
            .Select(g => (g.Key, Bytes: g.Sum(l => l.Bytes), Sent: Sum(g, l => l.SenderTime), Received: Sum(g, l => l.ReceiverTime)))
            .Select(t => (t.Key, t.Bytes, t.Sent, t.Received, Rate(t.Bytes, t.Sent, t.Received)))
            .OrderBy(t => t.Item5).ThenBy(t => t.Key, StringComparer.Ordinal)];

    private static TimeSpan Sum(IEnumerable<TraceLeg> legs, Func<TraceLeg, TimeSpan> time) => TimeSpan.FromTicks(legs.Sum(l => time(l).Ticks));
}
