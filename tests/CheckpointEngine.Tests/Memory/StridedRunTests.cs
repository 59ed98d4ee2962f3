using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

public sealed class StridedRunTests
{
    [Fact]
    public void Fold_TheRowsOfAColumnSlice_BecomeOneStridedRun()
    {
        var runs = Enumerable.Range(0, 8).Select(r => new ByteRun(1000 + r * 300 + 100, r * 100, 100)).ToList();
        Assert.Equal([new StridedRun(1100, 300, 0, 100, 100, 8)], StridedRun.Fold(runs));
    }

    [Fact]
    public void Fold_KeepsOrder_AndStartsAnewWhereLengthOrStrideChanges()
    {
        List<ByteRun> runs =
        [
            new(0, 0, 10), new(20, 10, 10), new(40, 20, 10), // Stride 20 → 10.
            new(50, 30, 10),                                 // Stride 10 at the source: a new run.
            new(100, 40, 7),                                 // Another length.
        ];
        Assert.Equal(
            [new StridedRun(0, 20, 0, 10, 10, 3), new StridedRun(50, 10, 30, 10, 10, 1), new StridedRun(100, 7, 40, 7, 7, 1)],
            StridedRun.Fold(runs));
    }

    [Theory]
    [InlineData(1000, 900, 200, true)]   // Moved back by less than its length.
    [InlineData(1000, 800, 200, false)]  // Moved back by exactly its length.
    [InlineData(1000, 5000, 200, false)]
    public void Overlaps_OneRun(long source, long destination, long length, bool overlaps) =>
        Assert.Equal(overlaps, new StridedRun(source, length, destination, length, length, 1).Overlaps);

    [Fact]
    public void Overlaps_ComparesWholeExtents()
    {
        // Rows 100 bytes wide, 300 apart, packed at the start: the packed rows run into the source's first rows.
        Assert.True(new StridedRun(150, 300, 0, 100, 100, 8).Overlaps);
        Assert.False(new StridedRun(1000, 300, 0, 100, 100, 8).Overlaps);
    }
}
