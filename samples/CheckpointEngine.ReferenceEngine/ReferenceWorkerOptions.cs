using CheckpointEngine.Worker;

namespace CheckpointEngine.ReferenceEngine;

/// <summary>How a <see cref="ReferenceWorker"/> listens and what it simulates.</summary>
public sealed record ReferenceWorkerOptions
{
    /// <summary>IP address or host name to listen on ("localhost" is 127.0.0.1).</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>
    /// Listen on a non-loopback <see cref="Host"/>. Off by default: whoever reaches the endpoint can start
    /// updates (the worker then connects to the sockets it is handed) and read the weights' digests.
    /// </summary>
    public bool AllowRemote { get; init; }

    /// <summary>TCP port; 0 picks a free one (see <see cref="ReferenceWorker.Address"/>).</summary>
    public int Port { get; init; }

    /// <summary>Tensor-parallel shards, one per device.</summary>
    public int TensorParallel { get; init; } = 1;

    /// <summary>Device id of each shard; by default <c>DeviceIds.Host(i)</c>.</summary>
    public IReadOnlyList<string>? DeviceIds { get; init; }

    /// <summary>Shard i keeps only its tensor-parallel slice of projection weights (otherwise every shard keeps everything).</summary>
    public bool ShardByTp { get; init; }

    /// <summary>With <see cref="ShardByTp"/>, declare the slices each shard keeps (the default), so the parameter server sends only those; off: every byte arrives and the shard cuts its slice out.</summary>
    public bool DeclareWants { get; init; } = true;

    /// <summary>
    /// Take declared parts in place where they lie (a column slice inside its whole tensor in the owners' memory, copied row by row into
    /// the shard) rather than packed by the rank first (the default); off: every part arrives packed, as to an older worker.
    /// </summary>
    public bool StridedParts { get; init; } = true;

    /// <summary>Update number <see cref="FailAtUpdate"/> fails at this bucket (fault injection); the others succeed.</summary>
    public int? FailAtBucket { get; init; }

    /// <summary>Which update (counted from 1 by the requests this worker gets) <see cref="FailAtBucket"/> fails.</summary>
    public int FailAtUpdate { get; init; } = 1;

    /// <summary>
    /// Fault injection: every update flips one bit of the last byte of this tensor where it arrived (in the update's buffer, before
    /// the worker checks and loads it), as a corruption on the way would. Verified updates then fail naming it; unverified ones load it.
    /// </summary>
    public string? CorruptTensor { get; init; }

    /// <summary>Extra time each bucket's reload takes (simulates a slow engine: for fault tests and timelines).</summary>
    public TimeSpan ReloadDelay { get; init; }

    /// <summary>How long a shard waits for the parameter server's next message.</summary>
    public TimeSpan IdleTimeout { get; init; } = WeightReceiver.DefaultIdleTimeout;
}
