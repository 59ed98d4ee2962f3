namespace CheckpointEngine.Planning;

/// <summary>
/// How big a bucket is and how many device buffers it gets, split into two kinds. Broadcast buffers
/// (<see cref="BroadcastSlots"/>) rotate over the buckets a rank receives; staging buffers
/// (<see cref="StagingSlots"/>) hold the buckets this rank sends, copied to the device ahead of their
/// turn, so every owner's host-to-device copies run at once instead of one bucket at a time. Four
/// buffers (two of each) let staging, the broadcast of bucket k and the reload of bucket k−1 overlap;
/// with less memory, three (one staging buffer: a rank that sends two buckets in a row stages the
/// second after the first is reloaded), then two (one of each: the broadcast also waits for the
/// previous reload).
/// </summary>
public sealed record BucketSizing(long BucketSize, int Slots)
{
    /// <summary>Buckets that may move at once (see <see cref="Server.UpdateOptions.BucketsInFlight"/>): each beyond the first has a broadcast buffer of its own.</summary>
    public int InFlight { get; init; } = 1;

    public const double DefaultFraction = 0.9;
    public const long DefaultMaxBucketSize = 8L << 30;

    public long DeviceBytes => BucketSize * Slots;

    /// <summary>Buffers a received bucket lands in, in turn: two, or one when only two buffers fit.</summary>
    public int BroadcastSlots => InFlight > 1 ? InFlight + 1 : Slots >= 3 ? 2 : 1;

    /// <summary>Buffers this rank's own buckets are staged in ahead of their broadcast.</summary>
    public int StagingSlots => Slots - BroadcastSlots;

    /// <summary>Offset of broadcast buffer <paramref name="i"/> in the device memory.</summary>
    public long BroadcastOffset(int i) => i % BroadcastSlots * BucketSize;

    /// <summary>Offset of staging buffer <paramref name="i"/> in the device memory (after the broadcast buffers).</summary>
    public long StagingOffset(int i) => (BroadcastSlots + i % StagingSlots) * BucketSize;

    /// <summary>
    /// Sizes buckets from the smallest free device memory over the ranks. Never below the largest
    /// tensor; never above <paramref name="maxBucketSize"/> or what the largest owner holds (a small
    /// checkpoint does not claim gigabytes).
    /// </summary>
    /// <exception cref="CheckpointEngineException">The largest tensor does not fit twice in the usable memory.</exception>
    /// <param name="inFlight">Buckets that may move at once: with more than one, <paramref name="inFlight"/> + 1 broadcast buffers and two
    /// staging buffers; fewer in flight where the memory does not hold that many buffers of the largest tensor.</param>
    public static BucketSizing Plan(long freeBytes, long largestTensor, long largestOwnerBytes,
        double fraction = DefaultFraction, long maxBucketSize = DefaultMaxBucketSize, int inFlight = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(freeBytes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(fraction);
        var usable = (long)(freeBytes * Math.Min(fraction, 1.0));
        var largest = Align(Math.Max(largestTensor, 1));
        if (largest * 2 > usable)
        {
            throw new CheckpointEngineException(
                $"not enough device memory: the largest tensor ({largestTensor} bytes) needs two buffers of {largest} bytes, but only {usable} of {freeBytes} free bytes are usable (fraction {fraction})");
        }
        while (inFlight > 1 && largest * (inFlight + 3) > usable)
        {
            inFlight--;
        }
        var slots = inFlight > 1 ? inFlight + 3 : largest * 4 <= usable ? 4 : largest * 3 <= usable ? 3 : 2;
        var size = Math.Min(usable / slots, Math.Min(Math.Max(maxBucketSize, 1), Align(Math.Max(largestOwnerBytes, 1))));
        size = Math.Max(largest, size / 256 * 256);
        return new BucketSizing(size, slots) { InFlight = Math.Max(inFlight, 1) };
    }


    internal static long Align(long n) => (n + 255) / 256 * 256;
}
