namespace CheckpointEngine.Planning;

/// <summary>
/// How big a bucket is and how many device buffers rotate. Three buffers let the copy of bucket k+1
/// to the device, the broadcast of bucket k and the worker's reload of bucket k−1 run at once; when
/// memory is short, two (the copy to the device then waits for the reload).
/// </summary>
public sealed record BucketSizing(long BucketSize, int Slots)
{
    public const double DefaultFraction = 0.9;
    public const long DefaultMaxBucketSize = 8L << 30;
    public const string MaxBucketSizeVariable = "CKPT_ENGINE_MAX_BUCKET_SIZE_GB";

    public long DeviceBytes => BucketSize * Slots;

    /// <summary>
    /// Sizes buckets from the smallest free device memory over the ranks. Never below the largest
    /// tensor; never above <paramref name="maxBucketSize"/> or what the largest owner holds (a small
    /// checkpoint does not claim gigabytes).
    /// </summary>
    /// <exception cref="InsufficientMemoryException">The largest tensor does not fit twice in the usable memory.</exception>
    public static BucketSizing Plan(long freeBytes, long largestTensor, long largestOwnerBytes,
        double fraction = DefaultFraction, long maxBucketSize = DefaultMaxBucketSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(freeBytes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(fraction);
        var usable = (long)(freeBytes * Math.Min(fraction, 1.0));
        var largest = Align(Math.Max(largestTensor, 1));
        if (largest * 2 > usable)
        {
            throw new InsufficientMemoryException(
                $"not enough device memory: the largest tensor ({largestTensor} bytes) needs two buffers of {largest} bytes, but only {usable} of {freeBytes} free bytes are usable (fraction {fraction})");
        }
        var slots = largest * 3 <= usable ? 3 : 2;
        var size = Math.Min(usable / slots, Math.Min(Math.Max(maxBucketSize, 1), Align(Math.Max(largestOwnerBytes, 1))));
        size = Math.Max(largest, size / 256 * 256);
        return new BucketSizing(size, slots);
    }

    /// <summary>The maximum bucket size from <c>CKPT_ENGINE_MAX_BUCKET_SIZE_GB</c> (a number of GiB, fractions allowed), else 8 GiB.</summary>
    public static long MaxBucketSizeFromEnvironment()
    {
        var text = Environment.GetEnvironmentVariable(MaxBucketSizeVariable);
        if (string.IsNullOrWhiteSpace(text))
        {
            return DefaultMaxBucketSize;
        }
        return double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var gb) && gb > 0
            ? (long)(gb * (1L << 30))
            : throw new ArgumentException($"{MaxBucketSizeVariable}={text} is not a positive number of GiB");
    }

    internal static long Align(long n) => (n + 255) / 256 * 256;
}
