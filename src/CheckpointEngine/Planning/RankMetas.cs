namespace CheckpointEngine.Planning;

/// <summary>
/// What one rank holds of a checkpoint and how to reach it: its P2P address and the network device
/// P2P reads of it go through (readers spread concurrent reads over owners' devices).
/// </summary>
public sealed record RankMetas(int Rank, string DeviceId, string? P2PAddress, IReadOnlyList<BufferMeta> Buffers, string? NetDevice = null)
{
    public long TotalBytes => Buffers.Sum(b => b.Metas.Sum(m => m.ByteLength));
}
