using CheckpointEngine.Planning;

namespace CheckpointEngine.Server;

/// <summary>
/// One bucket of an update: who stages it into its device buffer (the broadcast root, as a rank of
/// the update's group) and how (a copy from host memory, or a P2P read from the owner). <see cref="Stage"/>
/// takes the slot and the bucket's bytes some worker keeps (null: all of them); the rest may stay stale.
/// </summary>
internal sealed record BucketStep(H2DBucket Bucket, int Stager, Func<nint, IReadOnlyList<(long Offset, long Length)>?, Task> Stage);
