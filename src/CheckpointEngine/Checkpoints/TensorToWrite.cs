namespace CheckpointEngine.Checkpoints;

/// <summary>
/// A tensor for <see cref="SafeTensorsWriter"/>: its header fields and a callback that writes exactly
/// its bytes to the file stream (so large tensors can be generated or streamed, not held in memory).
/// </summary>
public sealed record TensorToWrite(string Name, DType DType, long[] Shape, Action<Stream> WriteData)
{
    public long ByteLength => DType.ByteLength(Shape);

    public static TensorToWrite FromBytes(string name, DType dtype, long[] shape, ReadOnlyMemory<byte> data) =>
        new(name, dtype, shape, s => s.Write(data.Span));
}
