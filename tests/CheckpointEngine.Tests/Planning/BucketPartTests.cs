using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Planning;

/// <summary>
/// A worker's part of a bucket: the runs that cut its declared slices out, checked against an
/// independent element-by-element slicer, copied out to another buffer and in place.
/// </summary>
public sealed class BucketPartTests
{
    private static readonly (string Name, DType DType, long[] Shape)[] Tensors =
    [
        ("q.weight", DType.BF16, [6, 10]),   // rows
        ("o.weight", DType.F32, [4, 6]),     // columns, two slices
        ("experts.weight", DType.BF16, [4, 3, 5]), // the middle dimension
        ("norm.weight", DType.F32, [7]),     // whole
        ("unused.weight", DType.I64, [3, 3]), // none
        ("fp4.weight", DType.F4, [3, 4]),    // sub-byte, columns on whole bytes
        ("scalar", DType.F64, []),           // whole
        ("fp8.weight", DType.F8_E4M3, [256, 6]),           // FP8 rows of one tensor-parallel rank...
        ("fp8.weight_scale_inv", DType.F32, [2, 1]),       // ...and the matching row of its 128-row block scales
    ];

    private static readonly WorkerWants Wants = new(new Dictionary<string, TensorWant>
    {
        ["q.weight"] = TensorWant.Along(0, new SliceRange(3, 3)),
        ["o.weight"] = TensorWant.Along(1, new SliceRange(4, 2), new SliceRange(0, 1)),
        ["experts.weight"] = TensorWant.Along(1, new SliceRange(1, 1)),
        ["unused.weight"] = TensorWant.None,
        ["fp4.weight"] = TensorWant.Along(1, new SliceRange(2, 2)),
        ["fp8.weight"] = TensorWant.Along(0, new SliceRange(128, 128)),
        ["fp8.weight_scale_inv"] = TensorWant.Along(0, new SliceRange(1, 1)),
    });

    /// <summary>The tensors laid out as a bucket would hold them (256-byte aligned), filled with distinct bytes.</summary>
    private static (H2DBucket Bucket, byte[] Bytes) Bucket()
    {
        var items = new List<ParameterMeta>();
        long offset = 0;
        foreach (var (name, dtype, shape) in Tensors)
        {
            var length = dtype.ByteLength(shape);
            items.Add(new ParameterMeta(name, dtype, [.. shape], offset, length));
            offset = BufferLayout.Align(offset + length);
        }
        var bytes = Enumerable.Range(0, (int)offset).Select(i => (byte)(i * 31 + 7)).ToArray();
        return (new H2DBucket(0, 0, offset, [new BucketRange(0, 0, offset, 0)], items), bytes);
    }

    /// <summary>The independent slicer: each kept element, in row-major order of the part (whole bytes only: here sub-byte slices are two elements a byte).</summary>
    private static byte[] Expected(ParameterMeta m, byte[] bucket)
    {
        var want = Wants.For(m.Name);
        var tensor = bucket.AsSpan((int)m.Offset, (int)m.ByteLength).ToArray();
        if (want.Kind == WantKind.Whole)
        {
            return tensor;
        }
        var shape = m.Shape.ToArray();
        var d = want.Dimension;
        var bits = m.DType.BitSize();
        var inner = shape.Skip(d + 1).Aggregate(1L, (a, b) => a * b);
        var outer = shape.Take(d).Aggregate(1L, (a, b) => a * b);
        var kept = new List<long>(); // Element indices, in the part's order.
        for (long o = 0; o < outer; o++)
        {
            foreach (var s in want.Slices.OrderBy(s => s.Start))
            {
                for (var i = s.Start; i < s.End; i++)
                {
                    for (long e = 0; e < inner; e++)
                    {
                        kept.Add(((o * shape[d]) + i) * inner + e);
                    }
                }
            }
        }
        var result = new byte[kept.Count * bits / 8];
        for (var k = 0; k < kept.Count; k++)
        {
            // Element k of the part takes element kept[k] of the tensor, bit for bit (4-bit elements: low nibble first).
            for (var b = 0; b < bits; b++)
            {
                var from = kept[k] * bits + b;
                var to = (long)k * bits + b;
                if ((tensor[from / 8] >> (int)(from % 8) & 1) != 0)
                {
                    result[to / 8] |= (byte)(1 << (int)(to % 8));
                }
            }
        }
        return result;
    }

    [Fact]
    public unsafe void Part_IsTheDeclaredSlicesOfEveryTensor_ToAnotherBufferAndInPlace()
    {
        var (bucket, bytes) = Bucket();
        var part = BucketPart.Of(bucket, Wants);

        Assert.DoesNotContain(part.Tensors, t => t.Meta.Name == "unused.weight");
        Assert.All(part.Runs, r => Assert.True(r.Destination <= r.Source, $"run {r} lands past its source"));
        Assert.Equal(part.Runs.OrderBy(r => r.Source), part.Runs);
        var q = part.Tensors.Single(t => t.Meta.Name == "q.weight");
        Assert.Equal([3, 10], q.Shape);
        Assert.Equal(new TensorPart(0, [[3, 3]], [6, 10]).PartShape(), q.Slices!.PartShape());
        Assert.Equal([4, 3], part.Tensors.Single(t => t.Meta.Name == "o.weight").Shape);
        Assert.Equal([4, 1, 5], part.Tensors.Single(t => t.Meta.Name == "experts.weight").Shape);
        Assert.Null(part.Tensors.Single(t => t.Meta.Name == "norm.weight").Slices);
        Assert.Single(part.Runs, r => r.Source == q.Meta.Offset + 3 * 10 * 2); // Contiguous rows: one run.

        // A rank holding the whole bucket hands contiguous ones (whole, rows) to its worker in place and gathers only the rest.
        Assert.Equal(q.Meta.Offset + 3 * 10 * 2, q.Source);
        var gatheredNames = part.Tensors.Where(t => t.Source is null).Select(t => t.Meta.Name).Order(StringComparer.Ordinal);
        Assert.Equal(["experts.weight", "fp4.weight", "o.weight"], gatheredNames);
        var gatheredTensors = part.Tensors.Where(t => t.Source is null).ToList();
        Assert.Equal(gatheredTensors.Sum(t => t.ByteLength), part.GatheredRuns.Sum(r => r.Length));
        Assert.All(part.GatheredRuns, r => Assert.Contains(gatheredTensors, t => r.Destination >= t.Offset && r.Destination + r.Length <= t.Offset + t.ByteLength));

        var copy = new byte[bucket.Size];
        var inPlace = bytes.ToArray();
        fixed (byte* source = bytes, destination = copy, both = inPlace)
        {
            part.CopyOut((nint)source, (nint)destination);
            part.CopyOut((nint)both, (nint)both);
        }
        foreach (var t in part.Tensors)
        {
            var expected = Expected(t.Meta, bytes);
            Assert.Equal(expected.Length, t.ByteLength);
            Assert.Equal(expected, copy.AsSpan((int)t.Offset, (int)t.ByteLength).ToArray());
            Assert.Equal(expected, inPlace.AsSpan((int)t.Offset, (int)t.ByteLength).ToArray());
        }
        Assert.Equal(part.Tensors.Sum(t => t.ByteLength), part.Bytes);
    }

    [Fact]
    public void WantsOfWholeAndNothing_AreTheBucketAndNothing()
    {
        var (bucket, _) = Bucket();
        var all = BucketPart.Of(bucket, new WorkerWants(new Dictionary<string, TensorWant>()));
        Assert.Equal(bucket.Items.Sum(m => m.ByteLength), all.Bytes);
        Assert.All(all.Tensors, t => Assert.Equal(t.Meta.Offset, t.Offset)); // Aligned already: nothing moves.
        Assert.Empty(BucketPart.Of(bucket, new WorkerWants(new Dictionary<string, TensorWant>(), TensorWant.None)).Tensors);
    }

    [Fact]
    public void Wanted_IsTheUnionOverClasses_AndStagingCutsRangesByIt()
    {
        var (bucket, _) = Bucket();
        var q = bucket.Items.Single(m => m.Name == "q.weight");
        var o = bucket.Items.Single(m => m.Name == "o.weight");
        WorkerWants Shard(int i) => new(new Dictionary<string, TensorWant>
        {
            ["q.weight"] = TensorWant.Along(0, new SliceRange(3 * i, 3)),
            ["o.weight"] = TensorWant.Along(1, new SliceRange(3 * i, 3)),
        }, TensorWant.None);

        // Two tensor-parallel shards: together they keep q and o whole (rows and columns meet), and nothing else.
        var wanted = BucketPart.Wanted(bucket, [Shard(0), Shard(1)]);
        Assert.Equal([(q.Offset, q.ByteLength), (o.Offset, o.ByteLength)], wanted);
        // One shard alone: its rows of q in one piece, its columns of o row by row.
        var one = BucketPart.Wanted(bucket, [Shard(1)])!;
        Assert.Equal((q.Offset + 3 * 10 * 2, 3 * 10 * 2), one[0]);
        Assert.Equal(1 + 4, one.Count);
        // A worker that declared nothing keeps everything.
        Assert.Null(BucketPart.Wanted(bucket, [Shard(0), null]));

        // Staging a bucket range [100, 100 + size) of some buffer copies only its wanted pieces, at their bucket offsets.
        var range = new BucketRange(0, 100, bucket.Size, 0);
        Assert.Equal([(100 + q.Offset, q.Offset, q.ByteLength), (100 + o.Offset, o.Offset, o.ByteLength)], BucketPart.Cut(range, wanted));
        Assert.Equal([(100L, 0L, bucket.Size)], BucketPart.Cut(range, null));
        Assert.Empty(BucketPart.Cut(new BucketRange(0, 0, 16, q.Offset + q.ByteLength), [(q.Offset, q.ByteLength)]));
    }
}
