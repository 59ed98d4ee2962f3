using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

/// <summary>
/// The streaming copy against a plain byte-by-byte reference: every length around its step sizes and threshold, every
/// alignment of both ends, parts cut in place (destination before the source), rows and batches of small runs.
/// </summary>
public sealed unsafe class StreamingCopyTests
{
    private const long Big = StreamingCopy.Threshold + 4096 + 77; // Streams: head, 128-byte body, 32-byte steps, tail.

    [Theory]
    [InlineData(0L)]
    [InlineData(1L)]
    [InlineData(31L)]
    [InlineData(129L)]
    [InlineData(StreamingCopy.Threshold - 1)]
    [InlineData(StreamingCopy.Threshold)]
    [InlineData(Big)]
    public void Copy_EveryAlignment_CopiesExactlyTheBytes(long length)
    {
        using var source = Filled(length + 64, seed: 1);
        using var destination = NativeBuffer.Allocate(length + 128);
        foreach (var (s, d) in new[] { (0, 0), (1, 0), (0, 1), (5, 31), (32, 7), (63, 33) })
        {
            new Span<byte>(destination.Pointer, (int)destination.Capacity).Fill(0xEE);
            StreamingCopy.Copy(source.Pointer + s, destination.Pointer + d, length);
            Assert.True(new ReadOnlySpan<byte>(source.Pointer + s, (int)length).SequenceEqual(new ReadOnlySpan<byte>(destination.Pointer + d, (int)length)),
                $"{length} bytes from +{s} to +{d}");
            Assert.Equal(0xEE, destination.Pointer[d + length]); // Nothing written past the end...
            Assert.True(d == 0 || destination.Pointer[d - 1] == 0xEE); // ...or before the start.
        }
    }

    [Theory]
    [InlineData(1L)]    // Moved back by less than a step.
    [InlineData(100L)]
    [InlineData(4096L)]
    public void Copy_DestinationBeforeTheSource_MovesForwardAsMemmove(long shift)
    {
        using var buffer = Filled(Big + shift + 64, seed: 2);
        var expected = new ReadOnlySpan<byte>(buffer.Pointer + 3 + shift, (int)Big).ToArray();
        StreamingCopy.Copy(buffer.Pointer + 3 + shift, buffer.Pointer + 3, Big);
        Assert.Equal(expected, new ReadOnlySpan<byte>(buffer.Pointer + 3, (int)Big).ToArray());
    }

    [Fact]
    public void Copy_DestinationAfterTheSource_StillCopiesAsMemmove()
    {
        using var buffer = Filled(Big + 200, seed: 3);
        var expected = new ReadOnlySpan<byte>(buffer.Pointer, (int)Big).ToArray();
        StreamingCopy.Copy(buffer.Pointer, buffer.Pointer + 100, Big);
        Assert.Equal(expected, new ReadOnlySpan<byte>(buffer.Pointer + 100, (int)Big).ToArray());
    }

    [Theory]
    [InlineData(96L, 8L)]       // Under the threshold in all: through the caches.
    [InlineData(4000L, 200L)]   // Rows narrower than a page, many of them: streams.
    [InlineData(70_001L, 5L)]   // Odd widths: every row has its own head and tail.
    public void CopyRows_PacksAColumnSlice(long width, long rows)
    {
        var pitch = width * 2 + 13;
        using var source = Filled(rows * pitch + 64, seed: 4);
        using var destination = NativeBuffer.Allocate(rows * width + 64);
        StreamingCopy.CopyRows(source.Pointer + 7, pitch, destination.Pointer + 1, width, width, rows);
        for (long r = 0; r < rows; r++)
        {
            Assert.True(new ReadOnlySpan<byte>(source.Pointer + 7 + r * pitch, (int)width).SequenceEqual(new ReadOnlySpan<byte>(destination.Pointer + 1 + r * width, (int)width)), $"row {r}");
        }
    }

    [Fact]
    public void CopyAll_SmallRunsCutInPlace_StreamAsOneBatch()
    {
        // A bucket's part cut out in place: 3,000 runs of 100 bytes, each moved back to pack them (300 KB in all: a batch that streams).
        const int rows = 3000, width = 100, pitch = 250;
        using var buffer = Filled(rows * pitch, seed: 5);
        var runs = Enumerable.Range(0, rows).Select(r => new ByteRun(r * pitch + 50, r * width, width)).ToList();
        var expected = runs.SelectMany(r => new ReadOnlySpan<byte>(buffer.Pointer + r.Source, width).ToArray()).ToArray();
        Assert.True(runs.Sum(r => r.Length) >= StreamingCopy.Threshold);
        ByteRun.CopyAll(runs, buffer.Address, buffer.Address);
        Assert.Equal(expected, new ReadOnlySpan<byte>(buffer.Pointer, rows * width).ToArray());
    }

    private static NativeBuffer Filled(long length, int seed)
    {
        var buffer = NativeBuffer.Allocate(length);
        new Random(seed).NextBytes(new Span<byte>(buffer.Pointer, (int)buffer.Capacity));
        return buffer;
    }
}
