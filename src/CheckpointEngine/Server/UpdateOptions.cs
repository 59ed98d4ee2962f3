using CheckpointEngine.Planning;

namespace CheckpointEngine.Server;

/// <summary>Knobs of one update.</summary>
public sealed record UpdateOptions
{
    /// <summary>Deadline of every wait in the update (a collective, the worker's reply, its connection).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>Share of free device memory the update may use for buckets.</summary>
    public double MemoryFraction { get; init; } = BucketSizing.DefaultFraction;

    /// <summary>Largest bucket; null: the rank's configured maximum (<see cref="Runtime.RankConfig.MaxBucketSize"/>).</summary>
    public long? MaxBucketSize { get; init; }

    /// <summary>
    /// Send each tensor's registration-time CRC-32 with its load message, so the workers check the bytes they
    /// received before loading them; a mismatch fails the update on every rank naming the tensor, rank and device.
    /// </summary>
    public bool Verify { get; init; }

    /// <summary>
    /// Whether a shard-aware update across hosts relays each class's part over its own group (see <see cref="ClassRelay"/>), for the buckets
    /// where that moves no more bytes into any host than the plain way. Null (auto): on the host backend, yes; on GPUs, from
    /// <see cref="ParameterServer.GpuRelayHosts"/> hosts on, where the simulator prices the relays below a whole-bucket broadcast ring
    /// (below it, one bucket at a time, the stager's node sends every class's part and the relays wait for the scatter: slower).
    /// </summary>
    public bool? ClassRelays { get; init; }

    /// <summary>
    /// How many relayed buckets may move at once (1: one at a time, the default). With more, a shard-aware update across hosts issues the
    /// relays of the next buckets staged on other hosts (their own groups, their own NICs) while earlier ones still move, in an order that
    /// takes stagers host by host; the device buffers get one broadcast slot more per extra bucket (smaller buckets in the same memory).
    /// The simulator prices three in flight below the targets at 256 GPUs; not yet measured on a GPU cluster. At most 8.
    /// On GPUs it stays off by default until a multi-GPU run has shown it safe: buckets from different stager hosts then run NCCL
    /// operations on several communicators at once, which a member may issue in another order than its peers (each host's chain is
    /// ordered, the chains are not), and NCCL kernels that wait on each other across communicators can deadlock a device whose SMs they
    /// fill (NCCL's guide asks that operations on several communicators be submitted in the same order on every rank).
    /// </summary>
    public int BucketsInFlight { get; init; } = 1;

    /// <summary>How a P2P update reads: tcp (always possible), ucx (when the rank's store runs UCX); null or auto: the rank's store as it was started.</summary>
    public Runtime.P2P.P2PTransport? P2PTransport { get; init; }
}
