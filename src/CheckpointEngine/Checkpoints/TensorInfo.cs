using System.Collections.Immutable;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// One tensor of a safetensors file: <see cref="DataOffset"/> is relative to the start of the data
/// section (as in the header's data_offsets), <see cref="ByteLength"/> is end − begin.
/// </summary>
public sealed record TensorInfo(string Name, DType DType, ImmutableArray<long> Shape, long DataOffset, long ByteLength)
{
    public long ElementCount => DTypes.TryElementCount(Shape.AsSpan(), out var n) ? n : throw new InvalidOperationException("invalid shape");

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}
