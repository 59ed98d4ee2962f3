using CheckpointEngine.Planning;

namespace CheckpointEngine.Tests.Planning;

public class BucketSizingTests
{
    private const long GiB = 1L << 30;

    [Fact]
    public void Plan_PlentyOfMemory_TwoBroadcastAndTwoStagingBuffersCappedByMaximum()
    {
        var s = BucketSizing.Plan(100 * GiB, 1 << 20, 500 * GiB, maxBucketSize: 8 * GiB);
        Assert.Equal(4, s.Slots);
        Assert.Equal(8 * GiB, s.BucketSize);
        Assert.Equal((2, 2), (s.BroadcastSlots, s.StagingSlots));
        // Broadcast buffers first, then staging buffers; indices wrap around their own kind.
        Assert.Equal([0, 8 * GiB, 0], new[] { s.BroadcastOffset(0), s.BroadcastOffset(1), s.BroadcastOffset(2) });
        Assert.Equal([16 * GiB, 24 * GiB, 16 * GiB], new[] { s.StagingOffset(0), s.StagingOffset(1), s.StagingOffset(2) });
    }

    /// <summary>Three buckets in flight: a broadcast buffer each and one for the reload, two staging buffers, in the same memory (smaller buckets).</summary>
    [Fact]
    public void Plan_ThreeInFlight_FourBroadcastAndTwoStagingBuffers()
    {
        var s = BucketSizing.Plan(70 * GiB, 1 << 20, 500 * GiB, fraction: 1.0, maxBucketSize: 64 * GiB, inFlight: 3);
        Assert.Equal((6, 3), (s.Slots, s.InFlight));
        Assert.Equal((4, 2), (s.BroadcastSlots, s.StagingSlots));
        Assert.Equal(70 * GiB / 6 / 256 * 256, s.BucketSize);
        Assert.Equal([0, 3 * s.BucketSize, 0], new[] { s.BroadcastOffset(0), s.BroadcastOffset(3), s.BroadcastOffset(4) });
        Assert.Equal(4 * s.BucketSize, s.StagingOffset(2));
    }

    /// <summary>Too little memory for that many buffers of the largest tensor: fewer in flight, down to one (the usual four buffers).</summary>
    [Fact]
    public void Plan_InFlightBeyondTheMemory_FewerInFlight()
    {
        var five = BucketSizing.Plan(10 * GiB, 2 * GiB, 500 * GiB, fraction: 1.0, inFlight: 3);
        Assert.Equal((5, 2, 3), (five.Slots, five.InFlight, five.BroadcastSlots));
        var one = BucketSizing.Plan(9 * GiB, 2 * GiB, 500 * GiB, fraction: 1.0, inFlight: 3);
        Assert.Equal((4, 1, 2), (one.Slots, one.InFlight, one.BroadcastSlots));
    }

    [Fact]
    public void Plan_LargestTensorOverAQuarter_ThreeBuffersWithOneForStaging()
    {
        var s = BucketSizing.Plan(10 * GiB, 3 * GiB, 500 * GiB, fraction: 1.0, maxBucketSize: 8 * GiB);
        Assert.Equal(3, s.Slots);
        Assert.Equal((2, 1), (s.BroadcastSlots, s.StagingSlots));
        Assert.Equal(10 * GiB / 3 / 256 * 256, s.BucketSize);
        Assert.Equal(2 * s.BucketSize, s.StagingOffset(5));
    }

    [Fact]
    public void Plan_LargestTensorOverAThird_FallsBackToTwoBuffers()
    {
        var s = BucketSizing.Plan(10 * GiB, 4 * GiB, 500 * GiB, fraction: 1.0, maxBucketSize: 8 * GiB);
        Assert.Equal(2, s.Slots);
        Assert.Equal((1, 1), (s.BroadcastSlots, s.StagingSlots));
        Assert.Equal(5 * GiB, s.BucketSize);
    }

    [Fact]
    public void Plan_NeverBelowTheLargestTensor()
    {
        var s = BucketSizing.Plan(100 * GiB, 3 * GiB, 500 * GiB, maxBucketSize: GiB);
        Assert.Equal(3 * GiB, s.BucketSize);
    }

    [Fact]
    public void Plan_SmallCheckpoint_DoesNotClaimMoreThanItsLargestOwner()
    {
        var s = BucketSizing.Plan(100 * GiB, 1000, 10_000);
        Assert.Equal(10_240, s.BucketSize);
        Assert.Equal(40_960, s.DeviceBytes);
    }

    [Fact]
    public void Plan_NotEnoughMemory_SaysHowMuchIsNeeded()
    {
        var e = Assert.Throws<CheckpointEngineException>(() => BucketSizing.Plan(GiB, GiB, GiB));
        Assert.Contains("largest tensor", e.Message);
    }

    [Theory]
    [InlineData(4 * 256, 4)] // Exactly four buffers of the largest tensor fit.
    [InlineData(4 * 256 - 1, 3)]
    [InlineData(3 * 256, 3)]
    [InlineData(3 * 256 - 1, 2)]
    [InlineData(2 * 256, 2)] // Exactly two fit: still a plan.
    public void Plan_UsableMemoryAtAMultipleOfTheLargestTensor_UsesThatManyBuffers(long free, int slots)
    {
        var s = BucketSizing.Plan(free, 256, GiB, fraction: 1.0);
        Assert.Equal(slots, s.Slots);
        Assert.Equal(256, s.BucketSize);
    }

    [Fact]
    public void Plan_OneByteShortOfTwoBuffers_Throws()
    {
        var e = Assert.Throws<CheckpointEngineException>(() => BucketSizing.Plan(2 * 256 - 1, 256, GiB, fraction: 1.0));
        Assert.Equal("not enough device memory: the largest tensor (256 bytes) needs two buffers of 256 bytes, but only 511 of 511 free bytes are usable (fraction 1)", e.Message);
    }

    [Fact]
    public void Plan_FractionOverOne_UsesNoMoreThanTheFreeMemory()
    {
        var s = BucketSizing.Plan(4 * 1024, 1, GiB, fraction: 2.0, maxBucketSize: GiB);
        Assert.Equal((4, 1024L), (s.Slots, s.BucketSize));
    }

    [Fact]
    public void Plan_BucketSize_RoundsDownToAMultipleOf256()
    {
        var s = BucketSizing.Plan(4 * 1000, 1, GiB, fraction: 1.0, maxBucketSize: GiB);
        Assert.Equal((4, 768L), (s.Slots, s.BucketSize));
    }

    [Theory]
    [InlineData(-1L, 0.9)]
    [InlineData(GiB, 0.0)]
    [InlineData(GiB, -0.5)]
    public void Plan_NegativeMemoryOrNoFraction_IsABug(long free, double fraction) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => BucketSizing.Plan(free, 1, 1, fraction));

    [Theory]
    [InlineData("0.5", 512L << 20)]
    [InlineData("2", 2L << 30)]
    public void MaxBucketSize_FromEnvironment(string value, long expected) =>
        Assert.Equal(expected, CheckpointEngine.Runtime.RankConfig.FromEnvironment(new Dictionary<string, string> { [CheckpointEngine.Runtime.RankConfig.MaxBucketSizeVariable] = value }).MaxBucketSize);

    [Fact]
    public void MaxBucketSize_Unset_IsTheDefault() =>
        Assert.Equal(BucketSizing.DefaultMaxBucketSize, CheckpointEngine.Runtime.RankConfig.FromEnvironment(new Dictionary<string, string>()).MaxBucketSize);

    [Fact]
    public void Plan_UsesOnlyTheGivenFractionOfFreeMemory()
    {
        var e = Assert.Throws<CheckpointEngineException>(() => BucketSizing.Plan(1000, 300, 10_000, fraction: 0.5));
        Assert.Equal("not enough device memory: the largest tensor (300 bytes) needs two buffers of 512 bytes, but only 500 of 1000 free bytes are usable (fraction 0.5)", e.Message);
        Assert.Equal(2, BucketSizing.Plan(2048, 300, 10_000, fraction: 0.5).StagingSlots + BucketSizing.Plan(2048, 300, 10_000, fraction: 0.5).BroadcastSlots);
    }
}

