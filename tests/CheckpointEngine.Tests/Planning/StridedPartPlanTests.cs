using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Planning;

/// <summary>
/// A part for a worker that takes strided parts: one slice along a later dimension is handed as rows where they lie in the bucket
/// (source of its first byte, the whole tensor's row pitch) and left out of the runs gathered for it; everything else as before.
/// </summary>
public sealed class StridedPartPlanTests
{
    private static readonly (string Name, DType DType, long[] Shape)[] Tensors =
    [
        ("q.weight", DType.BF16, [6, 10]),                 // rows: one run
        ("o.weight", DType.BF16, [4, 12]),                 // columns, one slice: strided
        ("down.weight", DType.F8_E4M3, [256, 512]),        // FP8 columns: strided
        ("down.weight_scale_inv", DType.F32, [2, 4]),      // its block scales' columns: strided
        ("two.weight", DType.F32, [3, 8]),                 // columns, two slices: gathered still
        ("experts.weight", DType.BF16, [4, 3, 5]),         // the middle dimension: strided, rows of 5 elements
        ("flat.weight", DType.F32, [1, 8]),                // columns of a single row: one run
        ("norm.weight", DType.F32, [7]),                   // whole
    ];

    private static readonly WorkerWants Wants = new(new Dictionary<string, TensorWant>
    {
        ["q.weight"] = TensorWant.Along(0, new SliceRange(3, 3)),
        ["o.weight"] = TensorWant.Along(1, new SliceRange(6, 6)),
        ["down.weight"] = TensorWant.Along(1, new SliceRange(256, 256)),
        ["down.weight_scale_inv"] = TensorWant.Along(1, new SliceRange(2, 2)),
        ["two.weight"] = TensorWant.Along(1, new SliceRange(0, 2), new SliceRange(5, 2)),
        ["experts.weight"] = TensorWant.Along(1, new SliceRange(1, 1)),
        ["flat.weight"] = TensorWant.Along(1, new SliceRange(2, 4)),
    });

    private static H2DBucket Bucket()
    {
        var items = new List<ParameterMeta>();
        long offset = 512; // Not at the bucket's start: sources are bucket offsets.
        foreach (var (name, dtype, shape) in Tensors)
        {
            var length = dtype.ByteLength(shape);
            items.Add(new ParameterMeta(name, dtype, [.. shape], offset, length));
            offset = BufferLayout.Align(offset + length);
        }
        return new H2DBucket(0, 0, offset, [new BucketRange(0, 0, offset, 0)], items);
    }

    [Fact]
    public void Of_Strided_OneLaterSliceLiesInPlace_WithItsFirstByteAndTheTensorsRowPitch()
    {
        var bucket = Bucket();
        var part = BucketPart.Of(bucket, Wants, strided: true);
        var t = part.Tensors.ToDictionary(x => x.Meta.Name);
        long At(string name) => bucket.Items.Single(m => m.Name == name).Offset;

        Assert.Equal((At("o.weight") + (6 * 2), 12L * 2), (t["o.weight"].Source, t["o.weight"].Pitch));
        Assert.Equal((At("down.weight") + 256, 512L), (t["down.weight"].Source, t["down.weight"].Pitch));
        Assert.Equal((At("down.weight_scale_inv") + (2 * 4), 4L * 4), (t["down.weight_scale_inv"].Source, t["down.weight_scale_inv"].Pitch));
        Assert.Equal((At("experts.weight") + (5 * 2), 3L * 5 * 2), (t["experts.weight"].Source, t["experts.weight"].Pitch));
        // One run: where it lies, no pitch (rows, a single row's columns, whole tensors).
        Assert.Equal((At("q.weight") + (3 * 10 * 2), (long?)null), (t["q.weight"].Source, t["q.weight"].Pitch));
        Assert.Equal((At("flat.weight") + (2 * 4), (long?)null), (t["flat.weight"].Source, t["flat.weight"].Pitch));
        Assert.Equal((At("norm.weight"), (long?)null), (t["norm.weight"].Source, t["norm.weight"].Pitch));
        // Two slices along the columns: gathered, as for a worker that takes packed parts only.
        Assert.Equal(((long?)null, (long?)null), (t["two.weight"].Source, t["two.weight"].Pitch));
        Assert.Equal(3 * 2, part.GatheredRuns.Count);
        Assert.All(part.GatheredRuns, r => Assert.InRange(r.Source, At("two.weight"), At("two.weight") + (3 * 8 * 4) - 1));
        Assert.Equal(t["two.weight"].ByteLength, part.GatheredRuns.Sum(r => r.Length));
    }

    [Fact]
    public void Of_Strided_CutsTheSamePackedPart_AsForAPackedWorker()
    {
        var bucket = Bucket();
        var strided = BucketPart.Of(bucket, Wants, strided: true);
        var packed = BucketPart.Of(bucket, Wants);

        // The packed layout and its runs stay (ranks that receive the part cut it so); only what a holder gathers differs.
        Assert.Equal(packed.Runs, strided.Runs);
        Assert.Equal(packed.Size, strided.Size);
        Assert.Equal(packed.Tensors.Select(x => (x.Meta.Name, x.Offset, x.ByteLength)), strided.Tensors.Select(x => (x.Meta.Name, x.Offset, x.ByteLength)));
        Assert.All(packed.Tensors, x => Assert.Null(x.Pitch));
        Assert.True(packed.GatheredRuns.Sum(r => r.Length) > strided.GatheredRuns.Sum(r => r.Length));
        Assert.Equal(packed.GatheredRuns.Where(r => strided.GatheredRuns.Contains(r)), strided.GatheredRuns);
    }

    [Fact]
    public unsafe void Of_Strided_RowsAtSourceAndPitch_AreTheBytesOfThePackedPart()
    {
        var bucket = Bucket();
        var bytes = Enumerable.Range(0, (int)bucket.Size).Select(i => (byte)((i * 37) + 11)).ToArray();
        var strided = BucketPart.Of(bucket, Wants, strided: true);
        var packed = new byte[strided.Size];
        fixed (byte* from = bytes)
        fixed (byte* to = packed)
        {
            strided.CopyOut((nint)from, (nint)to);
        }
        foreach (var t in strided.Tensors.Where(x => x.Pitch is not null))
        {
            var rows = t.Meta.Shape.Take(t.Slices!.Dim).Aggregate(1L, (a, b) => a * b);
            var row = t.ByteLength / rows;
            var read = Enumerable.Range(0, (int)rows).SelectMany(i => bytes.Skip((int)(t.Source!.Value + (i * t.Pitch!.Value))).Take((int)row)).ToArray();
            Assert.Equal(packed.AsSpan((int)t.Offset, (int)t.ByteLength).ToArray(), read);
        }
    }
}
