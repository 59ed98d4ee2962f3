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

    /// <summary>
    /// Ours, shard-aware, as the loop being built for GPUs runs it, one bucket at a time: the stager packs each member's part
    /// and scatters the parts inside its node (NCCL grouped send/recv), then each class whose members are on other nodes
    /// relays its part from its head there over its own ring, all classes at once, where the real <c>ClassRelay</c> says it
    /// pays (else the whole bucket is broadcast); each GPU reloads only its part (<see cref="BucketRoute"/>).
    /// </summary>
    ShardAware,

    /// <summary>Ours, shard-aware as GPUs run it today: every GPU receives each bucket by broadcast and cuts its part on the device; each reloads only its part.</summary>
    ShardAwareBroadcast,

    /// <summary>What-if, not built: <see cref="ShardAware"/> with two buckets in flight, so that the scatter of bucket k+1 overlaps the relays of bucket k (their communicators differ); a part buffer more per GPU.</summary>
    ShardAwarePipelined,

    /// <summary>
    /// <see cref="ShardAware"/> with several buckets in flight (<see cref="Scenario.InFlight"/>), the schedule taking stagers node by node
    /// in turn so that buckets in flight leave through different nodes' NICs; a part buffer more per GPU and bucket in flight beyond the
    /// first. Built as an option (<c>UpdateOptions.BucketsInFlight</c>, <c>update --buckets-in-flight</c>), off by default until measured
    /// on a GPU cluster; buckets are sized as it sizes them (in-flight + 3 buffers in the same memory).
    /// </summary>
    ShardAwareConcurrent,
}
