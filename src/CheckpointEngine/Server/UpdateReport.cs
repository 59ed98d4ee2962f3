namespace CheckpointEngine.Server;

/// <summary>What an update did on this rank, with per-bucket stage times for timelines and benchmarks.</summary>
public sealed record UpdateReport(
    string Checkpoint,
    int Rank,
    long BucketSize,
    int Slots,
    long BytesDelivered,
    TimeSpan Duration,
    IReadOnlyList<BucketTiming> Buckets)
{
    /// <summary>The bytes this rank copied to its device buffer as a stager: only what some worker keeps, when every worker declared it.</summary>
    public long BytesStaged { get; init; }

    /// <summary>
    /// Bytes this rank copied into its slots to hand its worker a part of a bucket that lies on this rank (in the owners' memory, or in
    /// its own staging buffer): the column slices of a worker that takes packed parts only; 0 when its worker takes them in place.
    /// </summary>
    public long BytesGathered { get; init; }

    /// <summary>Distinct declarations of what the members' workers keep (workers that declared nothing count as one).</summary>
    public int WorkerClasses { get; init; }

    /// <summary>Bytes of declarations this rank received from the classes' leads: 0 once every member knows every class's (later updates of an RL loop).</summary>
    public long DeclarationBytes { get; init; }

    /// <summary>Bytes this rank received from other hosts over the network (the built-in communicator counts them; 0 where it cannot tell).</summary>
    public long NetworkBytesReceived { get; init; }

    /// <summary>
    /// Bytes this rank's device buffers took in from other ranks through the update's collectives (broadcasts, the scatter's receives, the
    /// class relays), counted by communicators that can (NCCL); 0 on the host backend, whose network bytes are <see cref="NetworkBytesReceived"/>.
    /// </summary>
    public long BytesReceived { get; init; }

    /// <summary>Buckets scattered from their stager, each member receiving only its part (a shard-aware update on GPUs).</summary>
    public int ScatteredBuckets { get; init; }

    /// <summary>This rank's legs on data links to and from other hosts, one per bucket and link (none on one host, or where the communicator cannot tell).</summary>
    public IReadOnlyList<LinkTiming> Links { get; init; } = [];

    /// <summary>
    /// <see cref="Links"/> summed per peer host and direction: bytes, and seconds blocked in the socket. A slow link shows at both
    /// its ends (its sender blocks, its receiver waits); a slow link upstream makes only receivers wait, one downstream only senders block.
    /// </summary>
    public IReadOnlyList<LinkTiming> LinkTotals() =>
        [.. Links.GroupBy(l => (l.PeerHost, l.Sent)).Select(g => new LinkTiming(-1, g.First().Peer, g.Key.PeerHost, g.Key.Sent, g.Sum(l => l.Bytes),
            g.Min(l => l.Start), g.Max(l => l.End), TimeSpan.FromTicks(g.Sum(l => l.Busy.Ticks)))).OrderBy(l => l.PeerHost, StringComparer.Ordinal).ThenBy(l => l.Sent)];

    /// <summary>Buckets whose parts went between hosts class by class (see <c>ClassRelay</c>) rather than whole through every host leader.</summary>
    public int RelayedBuckets { get; init; }

    /// <summary>Relayed buckets that could move at once (see <see cref="UpdateOptions.BucketsInFlight"/>): as asked, or as the default picked.</summary>
    public int BucketsInFlight { get; init; } = 1;

    /// <summary>How a P2P update read ("tcp" or "ucx"); null for a broadcast.</summary>
    public string? P2PTransport { get; init; }

    /// <summary>Every worker loaded straight out of the owners' registered shared memory (one host, host backend): nothing was staged or broadcast.</summary>
    public bool InPlace { get; init; }

    /// <summary>Every worker read each bucket where its stager staged it (one host, host backend, owners' memory not readable in place: a P2P update): nothing was broadcast.</summary>
    public bool ReadInStaging { get; init; }

    public TimeSpan HostToDevice => Sum(b => b.HostToDevice);

    public TimeSpan Broadcast => Sum(b => b.Broadcast);

    public TimeSpan Reload => Sum(b => b.Reload);

    private TimeSpan Sum(Func<BucketTiming, TimeSpan> stage) => TimeSpan.FromTicks(Buckets.Sum(b => stage(b).Ticks));
}

/// <summary>One bucket's stages on this rank, as offsets from the update's start (zero-length where this rank had no part).</summary>
public sealed record BucketTiming(int Index, int Owner, long Bytes,
    TimeSpan HostToDeviceStart, TimeSpan HostToDeviceEnd,
    TimeSpan BroadcastStart, TimeSpan BroadcastEnd,
    TimeSpan ReloadStart, TimeSpan ReloadEnd)
{
    public TimeSpan HostToDevice => HostToDeviceEnd - HostToDeviceStart;

    public TimeSpan Broadcast => BroadcastEnd - BroadcastStart;

    public TimeSpan Reload => ReloadEnd - ReloadStart;
}
