using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Tests.Checkpoints;

public class DTypesTests
{
    [Theory]
    [InlineData("F4", 4)]
    [InlineData("F6_E2M3", 6)]
    [InlineData("F6_E3M2", 6)]
    [InlineData("F8_E8M0", 8)]
    [InlineData("F8_E4M3FNUZ", 8)]
    [InlineData("F8_E5M2FNUZ", 8)]
    [InlineData("BOOL", 8)]
    [InlineData("BF16", 16)]
    [InlineData("C64", 64)]
    [InlineData("U64", 64)]
    public void BitSize_MatchesFormat(string name, int bits)
    {
        Assert.True(DTypes.TryParse(name, out var d));
        Assert.Equal(bits, d.BitSize());
        Assert.Equal(name, d.Name());
    }

    [Theory]
    [InlineData("F8_E4M3FN")]
    [InlineData("f32")]
    [InlineData("INT4")]
    [InlineData("")]
    public void TryParse_UnknownName_Fails(string name) => Assert.False(DTypes.TryParse(name, out _));

    [Fact]
    public void ByteLength_SubByteTypes_MustFillWholeBytes()
    {
        Assert.Equal(2, DType.F4.ByteLength([4]));
        Assert.Equal(3, DType.F6_E2M3.ByteLength([4]));
        Assert.False(DType.F4.TryByteLength([3], out _, out var why));
        Assert.Contains("whole bytes", why);
    }

    [Fact]
    public void ByteLength_ScalarAndZeroElement()
    {
        Assert.Equal(4, DType.F32.ByteLength([]));
        Assert.Equal(0, DType.F32.ByteLength([0, 7]));
    }

    [Fact]
    public void ByteLength_Overflow_Fails()
    {
        Assert.False(DType.F64.TryByteLength([long.MaxValue / 2, 3], out _, out var why));
        Assert.Contains("overflow", why);
    }
}
