using CheckpointEngine.Memory;

namespace CheckpointEngine.Planning;

/// <summary>
/// A bucket of one owner's tensors: the host ranges that fill it and the tensors in it, with
/// <see cref="ParameterMeta.Offset"/> relative to the bucket start.
/// </summary>
public sealed record H2DBucket(int Owner, int Index, long Size, IReadOnlyList<BucketRange> Ranges, IReadOnlyList<ParameterMeta> Items);
