using System.Buffers.Binary;
using CheckpointEngine.Runtime.Rendezvous;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Tests.Runtime;

public class StoreProtocolTests
{
    private static Writer AllKinds() => new Writer()
        .Byte(0).Byte(255)
        .Int32(int.MinValue).Int32(-1).Int32(int.MaxValue)
        .Int64(long.MinValue).Int64(0x0102030405060708)
        .Bytes([]).Bytes([1, 2, 3])
        .String("").String("key/ü層\0end");

    [Fact]
    public void WriterReader_AllFieldKinds_RoundTrip()
    {
        var frame = AllKinds().ToFrame().ToArray();
        Assert.Equal(frame.Length - 4, BinaryPrimitives.ReadInt32LittleEndian(frame));
        var r = new Reader(frame.AsSpan(4));
        Assert.Equal(0, r.Byte());
        Assert.Equal(255, r.Byte());
        Assert.Equal(int.MinValue, r.Int32());
        Assert.Equal(-1, r.Int32());
        Assert.Equal(int.MaxValue, r.Int32());
        Assert.Equal(long.MinValue, r.Int64());
        Assert.Equal(0x0102030405060708, r.Int64());
        Assert.Empty(r.Bytes());
        Assert.Equal([1, 2, 3], r.Bytes());
        Assert.Equal("", r.String());
        Assert.Equal("key/ü層\0end", r.String());
        Assert.True(r.AtEnd);
    }

    [Fact]
    public void Writer_IsLittleEndian()
    {
        var frame = new Writer().Int32(0x01020304).Int64(0x05).ToFrame().ToArray();
        Assert.Equal(new byte[] { 12, 0, 0, 0, 4, 3, 2, 1, 5, 0, 0, 0, 0, 0, 0, 0 }, frame);
    }

    [Fact]
    public void Reader_TruncatedPayload_ThrowsInvalidData()
    {
        var payload = AllKinds().ToFrame().ToArray()[4..];
        for (var cut = 0; cut < payload.Length; cut++)
        {
            var part = payload[..cut];
            Assert.Throws<InvalidDataException>(() =>
            {
                var r = new Reader(part);
                r.Byte(); r.Byte(); r.Int32(); r.Int32(); r.Int32(); r.Int64(); r.Int64(); r.Bytes(); r.Bytes(); r.String(); r.String();
            });
        }
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(int.MinValue)]
    [InlineData(5)] // Longer than what is left.
    public void Reader_BadLengthPrefix_ThrowsInvalidData(int length)
    {
        var payload = new Writer().Int32(length).Byte(1).ToFrame().ToArray()[4..];
        Assert.Throws<InvalidDataException>(() => new Reader(payload).Bytes());
        Assert.Throws<InvalidDataException>(() => new Reader(payload).String());
    }

    [Theory]
    [InlineData(-1, false)]
    [InlineData(3, false)] // 3 strings need at least 12 bytes.
    [InlineData(int.MaxValue, false)]
    [InlineData(2, true)]
    [InlineData(0, true)]
    public void ReaderCount_MustFitWhatIsLeft(int count, bool fits)
    {
        var payload = new Writer().Int32(count).String("a").String("b").ToFrame().ToArray()[4..];
        if (fits)
        {
            Assert.Equal(count, new Reader(payload).Count(4));
        }
        else
        {
            Assert.Throws<InvalidDataException>(() => new Reader(payload).Count(4));
        }
    }

    [Fact]
    public async Task ReadFrameAsync_WrittenFrames_ReadBackThenNullAtEnd()
    {
        using var stream = new MemoryStream();
        stream.Write(new Writer().String("one").ToFrame().Span);
        stream.Write(new Writer().Byte(7).ToFrame().Span);
        stream.Position = 0;
        var ct = TestContext.Current.CancellationToken;
        Assert.Equal("one", ReadString(await ReadFrameAsync(stream, ct)));
        Assert.Equal(new byte[] { 7 }, await ReadFrameAsync(stream, ct));
        Assert.Null(await ReadFrameAsync(stream, ct));
    }

    private static string ReadString(byte[]? payload) => new Reader(payload).String();

    [Theory]
    [InlineData(new byte[] { 1, 0 })] // Inside the length.
    [InlineData(new byte[] { 0, 0, 0, 0 })] // Empty frame.
    [InlineData(new byte[] { 0xFF, 0xFF, 0xFF, 0xFF })] // Negative length.
    [InlineData(new byte[] { 0xFF, 0xFF, 0xFF, 0x7F })] // Far over the limit.
    [InlineData(new byte[] { 1, 0, 0, 4 })] // Just over 64 MiB.
    public async Task ReadFrameAsync_BadLength_ThrowsInvalidData(byte[] prefix)
    {
        using var stream = new MemoryStream(prefix);
        await Assert.ThrowsAsync<InvalidDataException>(() => ReadFrameAsync(stream, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task ReadFrameAsync_EndsInsidePayload_Throws()
    {
        using var stream = new MemoryStream([5, 0, 0, 0, 1, 2]);
        await Assert.ThrowsAsync<EndOfStreamException>(() => ReadFrameAsync(stream, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task ReadFrameAsync_OverCallerLimit_ThrowsBeforeReadingPayload()
    {
        using var stream = new MemoryStream(new Writer().Bytes(new byte[100]).ToFrame().ToArray());
        var e = await Assert.ThrowsAsync<InvalidDataException>(() => ReadFrameAsync(stream, TestContext.Current.CancellationToken, maxLength: 64));
        Assert.Contains("104", e.Message, StringComparison.Ordinal);
        Assert.Equal(4, stream.Position);
    }

    [Fact]
    public void StoreTimeoutException_KeepsMissingKeys() =>
        Assert.Equal(["a", "b"], new StoreTimeoutException("late", ["a", "b"]).MissingKeys);
}
