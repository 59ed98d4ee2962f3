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
    /// where that moves no more bytes into any host than the plain way. Null (auto): on the host backend, yes; on GPUs, with several buckets
    /// in flight (see <see cref="BucketsInFlight"/>), or from <see cref="ParameterServer.GpuRelayHosts"/> hosts on: the simulator prices
    /// relays one bucket at a time above a whole-bucket broadcast ring below that (the stager's node sends every class's part, and the
    /// relays wait for the scatter), and several in flight below it from two hosts on.
    /// </summary>
    public bool? ClassRelays { get; init; }

    /// <summary>
    /// How many relayed buckets may move at once, 1 to 8. With more than one, a shard-aware update across hosts moves the next buckets
    /// staged on other hosts (their own groups, their own NICs) while earlier ones still move, stagers taken host by host; the device
    /// buffers get one broadcast slot more per extra bucket (smaller buckets in the same memory). Every member calls the moves' collectives
    /// in bucket order and submits each device's NCCL operations in call order, so the operations of the several communicators are
    /// submitted in one order on every rank, as NCCL asks (an order that differs between ranks can deadlock the GPUs).
    /// Null (auto): on GPUs, <see cref="ParameterServer.GpuBucketsInFlight"/> where every rank's last broadcast update had declared parts
    /// across hosts (an RL loop's steady state: the engines declare what they keep from their second update), else 1. The simulator
    /// prices three in flight at 1.8 s for Kimi-K2 and 1.3 s for DeepSeek-V3.1 on 256 H20 GPUs; not yet measured on a GPU cluster.
    /// </summary>
    public int? BucketsInFlight { get; init; }

    /// <summary>How a P2P update reads: tcp (always possible), ucx (when the rank's store runs UCX); null or auto: the rank's store as it was started.</summary>
    public Runtime.P2P.P2PTransport? P2PTransport { get; init; }
}
