using CheckpointEngine.Tests.Support;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

/// <summary>The protocol's checksum equals the IEEE CRC-32 (zlib.crc32) computed from its definition, whatever the size and however it is cut.</summary>
public sealed unsafe class TensorChecksumTests
{
    private static byte[] Bytes(long n, int seed)
    {
        var bytes = new byte[n];
#pragma warning disable CA5394 // Test data, not security.
        new Random(seed).NextBytes(bytes);
#pragma warning restore CA5394
        return bytes;
    }

    [Fact]
    public void Crc32_CheckValue_IsTheIeeeOne()
    {
        Assert.Equal(0xCBF43926u, TensorChecksum.Crc32("123456789"u8));
        Assert.Equal(0u, TensorChecksum.Crc32([]));
        Assert.Equal("cbf43926", TensorChecksum.Hex(0xCBF43926));
        Assert.Equal("00000000", TensorChecksum.Hex(0));
    }

    [Theory]
    [InlineData(0L)]
    [InlineData(1L)]
    [InlineData(3L)]
    [InlineData(255L)]
    [InlineData(4097L)]
    [InlineData(TensorChecksum.Piece - 1)]
    [InlineData(TensorChecksum.Piece)]
    [InlineData(TensorChecksum.Piece + 1)]
    [InlineData((3 * TensorChecksum.Piece) + 7)]
    public void Crc32Parallel_OddSizesAcrossPieces_EqualsTheReference(long n)
    {
        var bytes = Bytes(n, (int)(n % 1000));
        fixed (byte* p = bytes)
        {
            Assert.Equal(ReferenceCrc32.Of(bytes), TensorChecksum.Crc32Parallel(p, n));
            Assert.Equal(ReferenceCrc32.Of(bytes), TensorChecksum.Crc32(p, n));
        }
    }

    [Fact]
    public void Combine_AnySplit_EqualsTheWhole()
    {
        var bytes = Bytes(3000, 5);
        foreach (var cut in new[] { 0, 1, 7, 1500, 2999, 3000 })
        {
            var (a, b) = (ReferenceCrc32.Of(bytes.AsSpan(0, cut)), ReferenceCrc32.Of(bytes.AsSpan(cut)));
            Assert.Equal(ReferenceCrc32.Of(bytes), TensorChecksum.Combine(a, b, bytes.Length - cut));
        }
    }

    [Theory]
    [InlineData("cbf43926", true, 0xCBF43926u)]
    [InlineData("CBF43926", true, 0xCBF43926u)]
    [InlineData("cbf4392", false, 0u)]
    [InlineData("cbf439260", false, 0u)]
    [InlineData("+bf43926", false, 0u)]
    [InlineData(" bf43926", false, 0u)]
    [InlineData("0000000g", false, 0u)]
    [InlineData(null, false, 0u)]
    public void TryParseHex_OnlyEightHexDigits(string? text, bool ok, uint value)
    {
        Assert.Equal(ok, TensorChecksum.TryParseHex(text, out var crc));
        Assert.Equal(value, ok ? crc : 0u);
    }
}
