namespace CheckpointEngine.Simulation;

/// <summary>Whose schedule the simulation runs.</summary>
public enum SimulatedDesign
{
    /// <summary>
    /// MoonshotAI's checkpoint-engine as its public code does it: tensors split over ranks in equal counts in
    /// index order; per step every owner copies its next bucket to a staging buffer (all at once, not overlapped
    /// with broadcasts); then owner by owner a device copy into one of two broadcast buffers, the broadcast, a
    /// wait for the worker's previous reload, an all-reduce; the worker reloads a bucket while the next is broadcast.
    /// </summary>
    Original,

    /// <summary>
    /// Our ParameterServer: tensors balanced by bytes (CheckpointSplit), buckets sized by BucketSizing, cut and
    /// interleaved by BucketPlanner (P2P: dealt by ReceiverAssignment); every stager copies its own buckets into
    /// its staging buffers ahead of their turn, all stagers at once, while the broadcast buffers rotate; the
    /// reload of bucket k−1 overlaps the broadcast of bucket k; one agreement per bucket.
    /// </summary>
    Ours,

    /// <summary>Ours, shard-aware as built for GPUs: every GPU receives each bucket and cuts its part on the device; each reloads only its slice of split tensors.</summary>
    ShardAware,

    /// <summary>What-if: shard-aware with class relays between nodes on GPUs (as the host backend does): smaller rings and network ingress, plus an NVLink step per bucket.</summary>
    ShardAwareRelay,
}
