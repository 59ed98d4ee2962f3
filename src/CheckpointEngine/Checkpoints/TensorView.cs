namespace CheckpointEngine.Checkpoints;

/// <summary>
/// A tensor's bytes where they lie in host memory (a mapped file or a host buffer), without a copy.
/// Valid only while the owner of the memory is alive.
/// </summary>
public readonly unsafe struct TensorView(TensorInfo info, byte* pointer)
{
    public TensorInfo Info { get; } = info;

    public byte* Pointer { get; } = pointer;

    public long Length => Info.ByteLength;

    /// <summary>The bytes as a span; tensors over 2 GiB must be read through <see cref="Pointer"/> in pieces.</summary>
    public ReadOnlySpan<byte> Span => Length <= int.MaxValue
        ? new ReadOnlySpan<byte>(Pointer, (int)Length)
        : throw new InvalidOperationException($"tensor '{Info.Name}' is {Length} bytes, too large for one span");
}
