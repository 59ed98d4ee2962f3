namespace CheckpointEngine.Hosting.Tracing;

/// <summary>What a Gantt chart shows, read back from a trace file: one row per rank × stage, bars in microseconds.</summary>
/// <param name="StartUs">The earliest event (the time axis starts here).</param>
/// <param name="EndUs">The latest end of a stage or wait event (update spans, setup included, are not drawn).</param>
internal sealed record Timeline(string Title, string? Subtitle, IReadOnlyList<Timeline.Row> Rows, double StartUs, double EndUs)
{
    public sealed record Row(int Pid, string Process, int Tid, string Track, IReadOnlyList<Bar> Bars);

    public readonly record struct Bar(double StartUs, double DurationUs, int? Bucket, long? Bytes, int? Owner);

    public bool IsEmpty => Rows.All(r => r.Bars.Count == 0);
}
