using CheckpointEngine.Checkpoints;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Support;

/// <summary>A tensor a test sends: deterministic bytes for its dtype and shape.</summary>
internal sealed record TestTensor(string Name, DType DType, long[] Shape, byte[] Bytes)
{
    public static TestTensor Random(string name, DType dtype, long[] shape, int seed = 1)
    {
        var bytes = new byte[dtype.ByteLength(shape)];
        new Random(name.Aggregate(seed, (h, c) => (h * 31) + c)).NextBytes(bytes); // Stable across runs, unlike string.GetHashCode.
        return new TestTensor(name, dtype, shape, bytes);
    }

    public string Sha256 => TensorHash.Sha256Hex(Bytes);
}
