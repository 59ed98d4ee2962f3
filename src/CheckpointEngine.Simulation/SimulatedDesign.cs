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
    /// Ours, shard-aware, as the GPU loop is built: the stager packs each member's part and scatters the parts inside its node (NCCL
    /// grouped send/recv), then each class whose members are on other nodes relays its part from its head there over its own ring, all
    /// classes at once, where the real <c>ClassRelay</c> says it pays (else the whole bucket is broadcast); each GPU reloads only its part
    /// (<see cref="BucketRoute"/>). Across nodes by broadcast, several stagers' buckets move at once (<see cref="Scenario.Window"/>, the
    /// GPU default of an RL loop's steady state), stagers taken node by node in turn so that they leave through different nodes' NICs,
    /// in the same memory as one at a time (more buffers of smaller buckets); <c>--in-flight 1</c>: one bucket at a time.
    /// </summary>
    ShardAware,

    /// <summary>Ours, shard-aware as GPUs run an update whose engines have not declared before (the first with declarations): every GPU receives each bucket by broadcast and cuts its part on the device; each reloads only its part.</summary>
    ShardAwareBroadcast,

    /// <summary>What-if, not built: <see cref="ShardAware"/> one at a time, but the scatter of bucket k+1 overlaps the relays of bucket k (their communicators differ), with a part buffer more per GPU.</summary>
    ShardAwarePipelined,
}
