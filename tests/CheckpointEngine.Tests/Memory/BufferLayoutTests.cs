using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CsCheck;

namespace CheckpointEngine.Tests.Memory;

public class BufferLayoutTests
{
    private const int A = BufferLayout.TensorAlignment;

    private static (string Name, DType DType, ImmutableArray<long> Shape, long ByteLength) T(string name, long bytes) =>
        (name, DType.U8, [bytes], bytes);

    /// <summary>Up to 40 tensors of distinct names, mostly small, some past any limit, some empty; and a buffer limit.</summary>
    private static readonly Gen<(List<(string Name, DType DType, ImmutableArray<long> Shape, long ByteLength)> Tensors, long Limit)> Input =
        Gen.Select(
            Gen.Select(Gen.Int[0, 60], Gen.Frequency((3, Gen.Long[0, 700]), (1, Gen.Long[0, 6000]), (1, Gen.Const(0L))), (id, bytes) => (id, bytes)).List[0, 40],
            Gen.Frequency((3, Gen.Long[1, 3000]), (1, Gen.Long[-5, 0]), (1, Gen.Long[3000, 100_000])),
            (items, limit) => (items.DistinctBy(x => x.id).Select(x => T($"layers.{x.id}.w", x.bytes)).ToList(), limit));

    private static string Describe(IReadOnlyList<BufferLayout.Buffer> plan) =>
        string.Join(" | ", plan.Select(b => $"{b.Size}: " + string.Join(", ", b.Metas.Select(m => $"{m.Name} {m.DType} [{string.Join(",", m.Shape)}] @{m.Offset}+{m.ByteLength}"))));

    [Fact]
    public void Pack_Offsets_AreMultiplesOf256() =>
        Input.Sample(x =>
        {
            foreach (var m in BufferLayout.Pack(x.Tensors, x.Limit).SelectMany(b => b.Metas))
            {
                Assert.Equal(0, m.Offset % A);
            }
        }, iter: 200);

    [Fact]
    public void Pack_EveryTensor_PlacedOnceSortedByNameAcrossBuffers() =>
        Input.Sample(x =>
        {
            var names = BufferLayout.Pack(x.Tensors, x.Limit).SelectMany(b => b.Metas).Select(m => m.Name).ToList();
            Assert.Equal(x.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal), names);
        }, iter: 200);

    [Fact]
    public void Pack_Metas_KeepDTypeShapeAndLength() =>
        Input.Sample(x =>
        {
            var byName = x.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
            foreach (var m in BufferLayout.Pack(x.Tensors, x.Limit).SelectMany(b => b.Metas))
            {
                var t = byName[m.Name];
                Assert.Equal(t.DType, m.DType);
                Assert.Equal(t.Shape, m.Shape);
                Assert.Equal(t.ByteLength, m.ByteLength);
                Assert.Equal(BufferLayout.Align(t.ByteLength), m.AlignedSize);
            }
        }, iter: 200);

    [Fact]
    public void Pack_TensorsInABuffer_DoNotOverlapAndStayInside() =>
        Input.Sample(x =>
        {
            foreach (var b in BufferLayout.Pack(x.Tensors, x.Limit))
            {
                var byOffset = b.Metas.OrderBy(m => m.Offset).ToList();
                for (var i = 1; i < byOffset.Count; i++)
                {
                    Assert.True(byOffset[i - 1].Offset + byOffset[i - 1].ByteLength <= byOffset[i].Offset,
                        $"{byOffset[i - 1].Name} overlaps {byOffset[i].Name}");
                }
                Assert.All(b.Metas, m => Assert.InRange(m.Offset + m.AlignedSize, 0, b.Size));
            }
        }, iter: 200);

    [Fact]
    public void Pack_BufferSize_IsSumOfAlignedSizesWithinLimit() =>
        Input.Sample(x =>
        {
            var plan = BufferLayout.Pack(x.Tensors, x.Limit);
            var largest = x.Tensors.Select(t => BufferLayout.Align(t.ByteLength)).DefaultIfEmpty(0).Max();
            foreach (var b in plan)
            {
                Assert.Equal(b.Metas.Sum(m => m.AlignedSize), b.Size);
                Assert.True(b.Size <= Math.Max(x.Limit, largest), $"buffer of {b.Size} bytes, limit {x.Limit}, largest tensor {largest}");
                Assert.NotEmpty(b.Metas);
            }
        }, iter: 200);

    [Fact]
    public void Pack_Buffers_AreNotSplitNeedlessly() =>
        Input.Sample(x =>
        {
            // A new buffer starts only when its first tensor would not have fitted in the previous one.
            var plan = BufferLayout.Pack(x.Tensors, x.Limit);
            var limit = Math.Max(x.Limit, x.Tensors.Select(t => BufferLayout.Align(t.ByteLength)).DefaultIfEmpty(0).Max());
            for (var i = 1; i < plan.Count; i++)
            {
                Assert.True(plan[i - 1].Size + plan[i].Metas[0].AlignedSize > limit);
            }
        }, iter: 200);

    [Fact]
    public void Pack_TensorLargerThanLimit_GetsABuffer() =>
        Input.Sample(x =>
        {
            var plan = BufferLayout.Pack(x.Tensors, x.Limit);
            var largest = x.Tensors.Select(t => BufferLayout.Align(t.ByteLength)).DefaultIfEmpty(0).Max();
            foreach (var t in x.Tensors.Where(t => BufferLayout.Align(t.ByteLength) > x.Limit))
            {
                var home = Assert.Single(plan, b => b.Metas.Any(m => m.Name == t.Name));
                Assert.True(home.Size >= BufferLayout.Align(t.ByteLength));
                if (BufferLayout.Align(t.ByteLength) == largest && largest > 0)
                {
                    // The largest tensor past the limit fills its buffer: only empty tensors share it.
                    Assert.Equal(largest, home.Size);
                    Assert.All(home.Metas.Where(m => m.Name != t.Name), m => Assert.Equal(0, m.AlignedSize));
                }
            }
        }, iter: 200);

    [Fact]
    public void Pack_SameInputTwiceOrReordered_GivesIdenticalLayout() =>
        Input.Sample(x =>
        {
            var first = Describe(BufferLayout.Pack(x.Tensors, x.Limit));
            Assert.Equal(first, Describe(BufferLayout.Pack(x.Tensors, x.Limit)));
            Assert.Equal(first, Describe(BufferLayout.Pack(Enumerable.Reverse(x.Tensors), x.Limit)));
            Assert.Equal(first, Describe(BufferLayout.Pack(x.Tensors.OrderBy(t => t.ByteLength).ThenByDescending(t => t.Name, StringComparer.Ordinal), x.Limit)));
        }, iter: 200);

    [Fact]
    public void Pack_EmptyInput_NoBuffers()
    {
        Assert.Empty(BufferLayout.Pack([]));
        Assert.Empty(BufferLayout.Pack([], maxBufferSize: 0));
    }

    [Fact]
    public void Pack_Example_SortsAlignsAndSplits()
    {
        var plan = BufferLayout.Pack([T("c", 300), T("a", 1), T("b", 256), T("d", 0), T("e", 100)], maxBufferSize: 1024);
        // Zero-byte d still fits (at the very end); e starts a second buffer.
        Assert.Equal("1024: a U8 [1] @0+1, b U8 [256] @256+256, c U8 [300] @512+300, d U8 [0] @1024+0 | 256: e U8 [100] @0+100", Describe(plan));
    }

    [Fact]
    public void Pack_OneHugeTensor_LimitGrowsToIt()
    {
        var plan = BufferLayout.Pack([T("big", 10_000), T("small", 10)], maxBufferSize: 512);
        Assert.Equal("10240: big U8 [10000] @0+10000 | 256: small U8 [10] @0+10", Describe(plan));
    }

    [Theory]
    [InlineData(0, 0)]
    [InlineData(1, 256)]
    [InlineData(255, 256)]
    [InlineData(256, 256)]
    [InlineData(257, 512)]
    [InlineData(4L << 30, 4L << 30)]
    public void Align_RoundsUpTo256(long size, long aligned) => Assert.Equal(aligned, BufferLayout.Align(size));
}
