using System.Collections.Immutable;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CsCheck;

namespace CheckpointEngine.Tests.Planning;

public class BucketPlannerTests
{
    private static RankMetas Owner(int rank, params long[][] bufferTensorSizes)
    {
        var buffers = bufferTensorSizes.Select((sizes, b) =>
        {
            var layout = BufferLayout.Pack(sizes.Select((n, i) => ($"r{rank}.b{b}.t{i:D4}", DType.U8, ImmutableArray.Create(n), n)), long.MaxValue).Single();
            return new BufferMeta(layout.Size, 0, layout.Metas);
        }).ToList();
        return new RankMetas(rank, $"dev{rank}", null, buffers);
    }

    [Fact]
    public void Cut_KeepsEveryTensorOnceWithinBucketSize()
    {
        var owner = Owner(0, [100, 300, 5000, 7], [1024, 1024, 1]);
        var buckets = BucketPlanner.Cut(owner, 5120);
        Assert.Equal(owner.Buffers.SelectMany(b => b.Metas).Select(m => m.Name).Order(), buckets.SelectMany(b => b.Items).Select(m => m.Name).Order());
        Assert.All(buckets, b => Assert.True(b.Size <= 5120));
        Assert.Equal(Enumerable.Range(0, buckets.Count), buckets.Select(b => b.Index));
    }

    [Fact]
    public void Cut_TensorLargerThanBucket_IsRefusedByName()
    {
        var e = Assert.Throws<ArgumentException>(() => BucketPlanner.Cut(Owner(3, [10, 4096]), 1024));
        Assert.Contains("r3.b0.t0001", e.Message);
    }

    [Fact]
    public void Cut_EmptyOwner_HasNoBuckets() => Assert.Empty(BucketPlanner.Cut(new RankMetas(0, "d", null, []), 1024));

    /// <summary>Copying each range to its bucket offset puts every tensor where its item says, and ranges never overlap.</summary>
    [Fact]
    public void Cut_RangesReproduceTensorsAtItemOffsets() =>
        Gen.Long[0, 3000].Array[1, 12].Array[1, 3].Select(Gen.Long[256, 6000]).Sample((sizes, bucketSize) =>
        {
            var largest = sizes.SelectMany(s => s).DefaultIfEmpty(0).Max();
            var owner = Owner(1, sizes);
            var buckets = BucketPlanner.Cut(owner, Math.Max(bucketSize, largest));
            foreach (var bucket in buckets)
            {
                var byName = owner.Buffers.SelectMany((b, i) => b.Metas.Select(m => (Buffer: i, Meta: m))).ToDictionary(x => x.Meta.Name);
                foreach (var item in bucket.Items)
                {
                    var (buffer, source) = byName[item.Name];
                    var range = bucket.Ranges.Single(r => r.Buffer == buffer && source.Offset >= r.Offset && source.Offset + source.ByteLength <= r.Offset + r.Length);
                    Assert.Equal(range.BucketOffset + (source.Offset - range.Offset), item.Offset);
                }
                Assert.All(bucket.Ranges, r => Assert.Equal(0, r.BucketOffset % 256));
                var spans = bucket.Ranges.Select(r => (r.BucketOffset, End: r.BucketOffset + r.Length)).OrderBy(x => x.BucketOffset).ToList();
                Assert.All(spans.Zip(spans.Skip(1)), p => Assert.True(p.First.End <= p.Second.BucketOffset));
                Assert.True(bucket.Size <= Math.Max(bucketSize, largest));
            }
            Assert.Equal(sizes.Sum(s => s.Length), buckets.Sum(b => b.Items.Count));
        }, iter: 200);

    [Fact]
    public void Interleave_TakesOwnersInTurn()
    {
        var a = BucketPlanner.Cut(Owner(0, [1000, 1000, 1000]), 1024);
        var b = BucketPlanner.Cut(Owner(1, [1000]), 1024);
        var c = BucketPlanner.Cut(Owner(2, [1000, 1000]), 1024);
        var order = BucketPlanner.Interleave([a, b, c]).Select(x => (x.Owner, x.Index)).ToList();
        Assert.Equal([(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)], order);
    }

    [Fact]
    public void Cut_ATensorEndingExactlyAtTheBucketSize_StaysInTheBucket_AndTheNextBucketKeepsTheBuffersSpacing()
    {
        var owner = Owner(0, [100, 100, 100, 100]); // At 0, 256, 512 and 768 in the buffer.
        Assert.Equal([0L, 256L, 512L], owner.Buffers[0].Metas.Take(3).Select(m => m.Offset));
        Assert.Equal([3, 1], BucketPlanner.Cut(owner, 612).Select(b => b.Items.Count));
        var buckets = BucketPlanner.Cut(owner, 611);
        Assert.Equal([2, 2], buckets.Select(b => b.Items.Count));
        Assert.Equal([0L, 256L], buckets[1].Items.Select(m => m.Offset)); // The range opened at buffer offset 512.
        Assert.Equal([new BucketRange(0, 512, 356, 0)], buckets[1].Ranges);
    }
}

