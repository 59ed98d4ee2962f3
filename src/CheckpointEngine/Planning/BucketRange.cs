namespace CheckpointEngine.Planning;

/// <summary>A byte range of one of the owner's host buffers, copied to <see cref="BucketOffset"/> in the bucket.</summary>
public sealed record BucketRange(int Buffer, long Offset, long Length, long BucketOffset);
