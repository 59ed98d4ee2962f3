namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// A group of ranks and the collectives the parameter server needs. Members call collectives in the
/// same order; each call has a deadline and fails with <see cref="CollectiveException"/> naming the
/// rank and operation when a peer dies or stops answering. Implementations: the built-in one (store
/// for control, shared memory and TCP for data); NCCL and UCX later.
/// </summary>
public interface ICommunicator : IDisposable
{
    string Name { get; }

    /// <summary>This process's rank within the group.</summary>
    int Rank { get; }

    int Size { get; }

    /// <summary>World rank of each group rank.</summary>
    IReadOnlyList<int> Members { get; }

    /// <summary>Bytes this member has received from other hosts over the network so far (0 where the implementation cannot tell).</summary>
    long NetworkBytesReceived => 0;

    /// <summary>The data-link legs of broadcasts between hosts since the last call, one per broadcast and link at each end (none where the implementation cannot tell).</summary>
    IReadOnlyList<LinkTransfer> TakeLinkTransfers() => [];

    Task BarrierAsync(TimeSpan timeout, CancellationToken ct = default);

    /// <summary>Every member's blob, indexed by group rank.</summary>
    Task<byte[][]> AllGatherAsync(byte[] blob, TimeSpan timeout, CancellationToken ct = default);

    /// <summary>Element-wise reduction of equal-length vectors over all members.</summary>
    Task<long[]> AllReduceAsync(long[] values, ReduceOp op, TimeSpan timeout, CancellationToken ct = default);

    /// <summary>
    /// Copies <paramref name="length"/> bytes at <paramref name="buffer"/> on group rank <paramref name="root"/>
    /// into <paramref name="buffer"/> on every other member (native memory; any size).
    /// </summary>
    Task BroadcastAsync(nint buffer, long length, int root, TimeSpan timeout, CancellationToken ct = default);

    /// <summary>
    /// A broadcast of which this member keeps only <paramref name="runs"/> of the root's buffer, packed into
    /// <paramref name="destination"/> (the root too, from its own buffer). <paramref name="buffer"/> must hold
    /// <paramref name="length"/> bytes on every member; <paramref name="destination"/> may be <paramref name="buffer"/>
    /// when the runs never land past their source. Host memory only. The default broadcasts everything, then cuts the
    /// runs out; the built-in communicator lets readers on the root's host copy only their runs.
    /// </summary>
    async Task BroadcastPartAsync(nint buffer, long length, int root, IReadOnlyList<CheckpointEngine.Memory.ByteRun> runs, nint destination,
        TimeSpan timeout, CancellationToken ct = default)
    {
        await BroadcastAsync(buffer, length, root, timeout, ct).ConfigureAwait(false);
        CheckpointEngine.Memory.ByteRun.CopyAll(runs, buffer, destination);
    }

    /// <summary>
    /// A part broadcast in which each member receives only its own part, packed into <paramref name="destination"/> (what
    /// <see cref="BroadcastPartAsync"/> leaves there): the root sends each member its part alone and cuts its own. <paramref name="runs"/>:
    /// this member's runs; null: the whole bucket, into <paramref name="buffer"/> (as <see cref="BroadcastAsync"/>).
    /// <paramref name="memberRuns"/>: on the root, every member's runs by group rank (null entries: the whole bucket; its own entry is not
    /// read); null on the others. The default is today's part broadcast (everything to every member, each cuts its own); NCCL groups
    /// scatter with grouped sends and receives.
    /// </summary>
    Task ScatterPartsAsync(nint buffer, long length, int root, IReadOnlyList<CheckpointEngine.Memory.ByteRun>? runs,
        IReadOnlyList<IReadOnlyList<CheckpointEngine.Memory.ByteRun>?>? memberRuns, nint destination, TimeSpan timeout, CancellationToken ct = default) =>
        runs is null ? BroadcastAsync(buffer, length, root, timeout, ct) : BroadcastPartAsync(buffer, length, root, runs, destination, timeout, ct);

    /// <summary>Bytes this member's device buffers took in from other members through this group's data collectives so far (0 where the implementation does not count them).</summary>
    long BytesReceived => 0;

    /// <summary>
    /// Copies <paramref name="runs"/> from <paramref name="source"/> to <paramref name="destination"/> in this member's memory, in order,
    /// where the group's buffers live (the same buffer when the runs never land past their source). The default copies host memory.
    /// </summary>
    Task CopyRunsAsync(IReadOnlyList<CheckpointEngine.Memory.ByteRun> runs, nint source, nint destination, TimeSpan timeout, CancellationToken ct = default)
    {
        CheckpointEngine.Memory.ByteRun.CopyAll(runs, source, destination);
        return Task.CompletedTask;
    }

    /// <summary>
    /// Declares that buffers inside <paramref name="segment"/> are shared memory that peers on this host
    /// may map; implementations that can use it (the built-in one) then avoid a copy. Optional.
    /// </summary>
    void RegisterSharedMemory(CheckpointEngine.Memory.SharedMemorySegment segment)
    {
    }

    void UnregisterSharedMemory(CheckpointEngine.Memory.SharedMemorySegment segment)
    {
    }

    /// <summary>Offers an update's device buffer to the group: shared memory where the device has it (the host backend), nothing otherwise.</summary>
    void Share(Devices.DeviceBuffer buffer)
    {
        if (buffer.SharedSegment is { } segment)
        {
            RegisterSharedMemory(segment);
        }
    }

    void Unshare(Devices.DeviceBuffer buffer)
    {
        if (buffer.SharedSegment is { } segment)
        {
            UnregisterSharedMemory(segment);
        }
    }

    /// <summary>A group of some members (given as group ranks, this rank among them); only those members call it.</summary>
    Task<ICommunicator> CreateSubGroupAsync(string name, IReadOnlyList<int> groupRanks, TimeSpan timeout, CancellationToken ct = default);
}
