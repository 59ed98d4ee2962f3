namespace CheckpointEngine.Server;

/// <summary>A snapshot of the update running on this rank (for status endpoints and progress displays).</summary>
public sealed record UpdateProgress(string Checkpoint, string Mode, DateTimeOffset Started, int BucketsDone, int BucketsTotal, long BytesDone, long BytesTotal);
