namespace CheckpointEngine.Planning;

/// <summary>What one rank holds of a checkpoint and how to reach it.</summary>
public sealed record RankMetas(int Rank, string DeviceId, string? P2PAddress, IReadOnlyList<BufferMeta> Buffers)
{
    public long TotalBytes => Buffers.Sum(b => b.Metas.Sum(m => m.ByteLength));
}
