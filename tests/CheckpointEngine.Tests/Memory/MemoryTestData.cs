using CheckpointEngine.Checkpoints;
using CheckpointEngine.Interop;
using CheckpointEngine.Memory;
using CheckpointEngine.Tests.Support;

namespace CheckpointEngine.Tests.Memory;

/// <summary>A tensor with known bytes, to write to a file or hand over in memory.</summary>
public sealed record TensorSpec(string Name, DType DType, long[] Shape, byte[] Data)
{
    public TensorToWrite ToWrite() => TensorToWrite.FromBytes(Name, DType, Shape, Data);

    public NamedTensor ToNamed() => new(Name, DType, Shape, Data);

    /// <summary>Same name, dtype and shape, other bytes.</summary>
    public TensorSpec WithSeed(int seed) => MemoryTestData.Tensor(Name, DType, Shape, seed);
}

public static class MemoryTestData
{
    public static TensorSpec Tensor(string name, DType dtype, long[] shape, int seed)
    {
        var data = new byte[dtype.ByteLength(shape)];
#pragma warning disable CA5394 // Test data, not security.
        new Random(seed).NextBytes(data);
#pragma warning restore CA5394
        return new TensorSpec(name, dtype, shape, data);
    }

    /// <summary>Mixed dtypes, scalars and zero-element tensors.</summary>
    public static List<TensorSpec> Mixed(string prefix, int seed) =>
    [
        Tensor(prefix + "attn.q_proj.weight", DType.BF16, [12, 7], seed + 1),
        Tensor(prefix + "attn.k_proj.weight", DType.F16, [9, 3], seed + 2),
        Tensor(prefix + "norm.weight", DType.F32, [33], seed + 3),
        Tensor(prefix + "norm.scale", DType.F32, [], seed + 4),
        Tensor(prefix + "mlp.up_proj.weight", DType.F8_E4M3, [17, 3], seed + 5),
        Tensor(prefix + "mlp.up_proj.weight_scale", DType.F32, [], seed + 6),
        Tensor(prefix + "rotary.position_ids", DType.I64, [5], seed + 7),
        Tensor(prefix + "step", DType.I64, [], seed + 8),
        Tensor(prefix + "causal_mask", DType.BOOL, [3, 3], seed + 9),
        Tensor(prefix + "empty.adapter", DType.F16, [0, 8], seed + 10),
        Tensor(prefix + "empty.vector", DType.F32, [0], seed + 11),
    ];

    /// <summary>Many tiny tensors of assorted dtypes.</summary>
    public static List<TensorSpec> Tiny(string prefix, int count, int seed)
    {
        DType[] dtypes = [DType.U8, DType.BF16, DType.F32, DType.I64, DType.BOOL, DType.F8_E4M3];
        return [.. Enumerable.Range(0, count).Select(i => Tensor($"{prefix}{i:D3}", dtypes[i % dtypes.Length], [1 + i % 5], seed + i))];
    }

    public static void Write(string path, IEnumerable<TensorSpec> tensors) =>
        SafeTensorsWriter.Write(path, tensors.Select(t => t.ToWrite()));

    /// <summary>Every tensor of <paramref name="expected"/> is in the checkpoint exactly once, with its bytes; nothing else is.</summary>
    public static void AssertHolds(RegisteredCheckpoint checkpoint, IEnumerable<TensorSpec> expected)
    {
        var byName = expected.ToDictionary(t => t.Name, StringComparer.Ordinal);
        var metas = checkpoint.Buffers.SelectMany(b => b.Metas.Select(m => (Buffer: b, Meta: m))).ToList();
        Assert.Equal(byName.Keys.Order(StringComparer.Ordinal), metas.Select(x => x.Meta.Name).Order(StringComparer.Ordinal));
        Assert.Equal(byName.Count, checkpoint.TensorCount);
        Assert.Equal(byName.Values.Sum(t => (long)t.Data.Length), checkpoint.TensorBytes);
        foreach (var (buffer, meta) in metas)
        {
            var spec = byName[meta.Name];
            Assert.Equal(spec.DType, meta.DType);
            Assert.Equal(spec.Shape, meta.Shape.ToArray());
            Assert.Equal(spec.Data.Length, meta.ByteLength);
            Assert.InRange(meta.Offset, 0, buffer.Size - meta.ByteLength);
            Assert.True(buffer.Bytes(meta).SequenceEqual(spec.Data), $"bytes of tensor '{meta.Name}' differ from the source");
            Assert.True(ReferenceCrc32.Of(spec.Data) == meta.Crc32, $"checksum of tensor '{meta.Name}' is {meta.Crc32:x8}, its bytes' CRC-32 is {ReferenceCrc32.Of(spec.Data):x8}");
        }
        AssertPacked(checkpoint);
    }

    /// <summary>Copied buffers hold their tensors sorted by name (across buffers), 256-aligned, densely packed.</summary>
    public static void AssertPacked(RegisteredCheckpoint checkpoint)
    {
        var copied = checkpoint.Buffers.Where(b => b.Kind != MemoryBufferKind.InPlace).ToList();
        var names = copied.SelectMany(b => b.Metas).Select(m => m.Name).ToList();
        Assert.Equal(names.Order(StringComparer.Ordinal), names);
        Assert.Equal(names.Count, names.Distinct(StringComparer.Ordinal).Count());
        foreach (var b in copied)
        {
            long next = 0;
            foreach (var m in b.Metas)
            {
                Assert.Equal(0, m.Offset % BufferLayout.TensorAlignment);
                Assert.Equal(next, m.Offset);
                next = m.Offset + m.AlignedSize;
            }
            Assert.Equal(next, b.Size);
        }
    }

    /// <summary>Buffers, sizes and tensor positions, to compare two layouts.</summary>
    public static List<string> Layout(RegisteredCheckpoint checkpoint) =>
        [.. checkpoint.Buffers.Select(b => $"{b.Kind} {b.Size}: " + string.Join(", ", b.Metas.Select(m => $"{m.Name}@{m.Offset}+{m.ByteLength}")))];
}
