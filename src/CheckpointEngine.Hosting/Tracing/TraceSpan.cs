namespace CheckpointEngine.Hosting.Tracing;

/// <summary>One bar of an update trace: a bucket on one track of one rank, in microseconds from the trace's origin.</summary>
/// <param name="Bucket">The bucket's index in the update's schedule; -1 for the update span.</param>
internal readonly record struct TraceSpan(int Rank, TraceTrack Track, int Bucket, int Owner, long Bytes, double StartUs, double DurationUs)
{
    public double EndUs => StartUs + DurationUs;
}
