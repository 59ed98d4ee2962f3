using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Planning;

/// <summary>
/// Parts and wanted ranges at their edges: exact byte counts, where packing lands a tensor after a slice, when runs
/// merge and when they must not, overlapping and covering slices of several classes, cuts of ranges that do not start
/// at the bucket's start.
/// </summary>
public sealed class BucketPartEdgeTests
{
    private static H2DBucket Bucket(params (string Name, DType DType, long[] Shape, long Offset)[] tensors)
    {
        var items = tensors.Select(t => new ParameterMeta(t.Name, t.DType, [.. t.Shape], t.Offset, t.DType.ByteLength(t.Shape))).ToList();
        var size = items.Max(m => m.Offset + m.ByteLength);
        return new H2DBucket(0, 0, size, [new BucketRange(0, 0, size, 0)], items);
    }

    private static WorkerWants Wants(params (string Name, TensorWant Want)[] wants) =>
        new(wants.ToDictionary(w => w.Name, w => w.Want), TensorWant.None);

    [Fact]
    public void BytesOf_CountsEachKindExactly_AndAgreesWithThePart()
    {
        var bucket = Bucket(("whole", DType.BF16, [4, 6], 0), ("cols", DType.F32, [4, 6], 256), ("fp4", DType.F4, [4, 8], 512), ("none", DType.I64, [2], 768));
        var wants = Wants(("whole", TensorWant.Whole), ("cols", TensorWant.Along(1, new SliceRange(4, 1), new SliceRange(1, 2))),
            ("fp4", TensorWant.Along(0, new SliceRange(0, 2))));
        Assert.Equal(48 + 4 * 3 * 4 + 2 * 8 / 2, BucketPart.BytesOf(bucket, wants));
        Assert.Equal(BucketPart.Of(bucket, wants).Bytes, BucketPart.BytesOf(bucket, wants));
        Assert.Equal(bucket.Items.Sum(m => m.ByteLength), BucketPart.BytesOf(bucket, null));
        Assert.Equal(0, BucketPart.BytesOf(bucket, Wants()));
    }

    [Fact]
    public void Of_ATensorAfterASlice_LandsAtItsSourceWhenThatIsBeforeTheNextAlignedPlace_AndSlicesAreListedInOrder()
    {
        // rows [2, 4) of a 64-byte tensor go to [0, 32); the whole tensor after it cannot move before its source at 64.
        var bucket = Bucket(("rows", DType.F32, [4, 4], 0), ("next", DType.F32, [8], 64), ("cols", DType.F32, [2, 6], 1024));
        var part = BucketPart.Of(bucket, Wants(("rows", TensorWant.Along(0, new SliceRange(2, 2))), ("next", TensorWant.Whole),
            ("cols", TensorWant.Along(1, new SliceRange(4, 1), new SliceRange(1, 2)))));
        Assert.Equal([0L, 64L, 256L], part.Tensors.Select(t => t.Offset));
        // Sources contiguous (32..64, 64..96) but destinations not (0..32, 64..96): two runs, never one.
        Assert.Equal(new ByteRun(32, 0, 32), part.Runs[0]);
        Assert.Equal(new ByteRun(64, 64, 32), part.Runs[1]);
        Assert.Equal([[1L, 2L], [4L, 1L]], part.Tensors[2].Slices!.Slices);
        Assert.Equal(256 + 2 * 3 * 4, part.Size);
    }

    [Fact]
    public void Of_WholeTensorsBackToBack_AreOneRun_AndAnEmptyTensorIsNoRun()
    {
        var bucket = Bucket(("a", DType.U8, [256], 0), ("b", DType.U8, [256], 256), ("empty", DType.F32, [0, 4], 512));
        var part = BucketPart.Of(bucket, new WorkerWants(new Dictionary<string, TensorWant>()));
        Assert.Equal([new ByteRun(0, 0, 512)], part.Runs);
        var empty = part.Tensors.Single(t => t.Meta.Name == "empty");
        Assert.Equal(0, empty.ByteLength);
        Assert.Equal([0L, 4L], empty.Shape);
    }

    [Fact]
    public void Wanted_WholeBeatsSlices_DifferentDimensionsTakeTheTensor_OverlapsMerge_ACoveringUnionIsTheTensor()
    {
        var bucket = Bucket(("pad", DType.U8, [256], 0), ("t", DType.F32, [8, 4], 256));
        var t = bucket.Items[1];
        WorkerWants Rows(long start, long length) => Wants(("t", TensorWant.Along(0, new SliceRange(start, length))));

        Assert.Equal([(t.Offset, t.ByteLength)], BucketPart.Wanted(bucket, [Rows(0, 2), Wants(("t", TensorWant.Whole))]));
        Assert.Equal([(t.Offset, t.ByteLength)], BucketPart.Wanted(bucket, [Rows(0, 2), Wants(("t", TensorWant.Along(1, new SliceRange(0, 1))))]));
        Assert.Equal([(t.Offset, 5 * 16L)], BucketPart.Wanted(bucket, [Rows(0, 3), Rows(2, 3)])); // Rows [0, 3) and [2, 5): [0, 5).
        Assert.Equal([(t.Offset + 16, 4 * 16L)], BucketPart.Wanted(bucket, [Rows(1, 4), Rows(2, 1)])); // One inside the other.
        Assert.Equal([(t.Offset, t.ByteLength)], BucketPart.Wanted(bucket, [Rows(0, 4), Rows(4, 4)]));
        Assert.Equal([(t.Offset + 4 * 16, 4 * 16L)], BucketPart.Wanted(bucket, [Rows(4, 4)])); // Not from row 0: the rows only.
        Assert.Null(BucketPart.Wanted(bucket, []));
        Assert.Empty(BucketPart.Wanted(bucket, [Wants()])!);
    }

    [Fact]
    public void Cut_ARangeThatStartsInsideTheBucket_ReadsFromWhereEachPieceLiesInTheBuffer()
    {
        var range = new BucketRange(0, 1000, 200, 300); // Buffer bytes [1000, 1200) land at bucket offsets [300, 500).
        Assert.Equal([(1050L, 350L, 20L), (1180L, 480L, 20L)], BucketPart.Cut(range, [(100, 50), (350, 20), (480, 100)]));
    }

    [Fact]
    public void Place_ContiguousTensorsOfAHeldBucketAreReadThere_OthersInThePart()
    {
        var meta = new ParameterMeta("t", DType.U8, [4], 0, 4);
        var inBucket = new PartTensor(meta, 16, 4, [4], null, Source: 100);
        var gathered = new PartTensor(meta, 16, 4, [4], null, Source: null);
        Assert.Equal(1100, BucketPart.Place(inBucket, holdsBucket: true, bucketOffset: 1000, partOffset: 5000));
        Assert.Equal(5016, BucketPart.Place(inBucket, holdsBucket: false, bucketOffset: 1000, partOffset: 5000));
        Assert.Equal(5016, BucketPart.Place(gathered, holdsBucket: true, bucketOffset: 1000, partOffset: 5000));
    }
}
