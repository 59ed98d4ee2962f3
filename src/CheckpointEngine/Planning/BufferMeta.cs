using CheckpointEngine.Memory;

namespace CheckpointEngine.Planning;

/// <summary>One registered host buffer as other ranks see it: size, address in its owner (for P2P reads), tensors.</summary>
public sealed record BufferMeta(long Size, long Address, IReadOnlyList<ParameterMeta> Metas);
