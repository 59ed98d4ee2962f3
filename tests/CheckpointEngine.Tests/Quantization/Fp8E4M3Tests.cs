using System.Runtime.Intrinsics;
using CheckpointEngine.Quantization;

namespace CheckpointEngine.Tests.Quantization;

/// <summary>The element encoder, scalar and vector, against the brute-force reference on every boundary of the format.</summary>
public class Fp8E4M3Tests
{
    /// <summary>Every code's value, the midpoints between neighbours and the floats just either side, subnormals, ±0, saturation, ±∞, NaNs.</summary>
    internal static IEnumerable<float> Boundaries()
    {
        var finite = Enumerable.Range(0, 0x7F).Select(c => (float)Fp8Reference.Values[c]).ToList(); // 0 .. 448, ascending
        var values = new List<float>(finite);
        for (var i = 0; i + 1 < finite.Count; i++)
        {
            var mid = (float)((finite[i] + (double)finite[i + 1]) / 2); // Exact: a few significant bits.
            values.AddRange([mid, MathF.BitIncrement(mid), MathF.BitDecrement(mid)]);
        }
        values.AddRange([
            float.Epsilon, 1e-40f, MathF.Pow(2, -10), MathF.BitIncrement(MathF.Pow(2, -10)), MathF.Pow(2, -9), MathF.Pow(2, -6),
            MathF.BitDecrement(MathF.Pow(2, -6)), MathF.BitIncrement(448), 456, 463.99997f, 464, 465, 480, 1e6f, float.MaxValue, float.PositiveInfinity,
        ]);
        values.AddRange([.. values.Select(v => -v)]);
        values.AddRange([-0f, float.NaN, -float.NaN, BitConverter.UInt32BitsToSingle(0x7F80_0001), BitConverter.UInt32BitsToSingle(0xFFC1_2345)]);
        return values;
    }

    [Fact]
    public void Reference_DecodesTheFormat()
    {
        Assert.Equal(448, Fp8Reference.Values[0x7E]);
        Assert.Equal(-448, Fp8Reference.Values[0xFE]);
        Assert.Equal(Math.Pow(2, -9), Fp8Reference.Values[0x01]);
        Assert.Equal(Math.Pow(2, -6), Fp8Reference.Values[0x08]);
        Assert.Equal(1, Fp8Reference.Values[0x38]);
        Assert.True(double.IsNaN(Fp8Reference.Values[0x7F]) && double.IsNaN(Fp8Reference.Values[0xFF]));
        Assert.Equal(254, Fp8Reference.Values.Count(v => !double.IsNaN(v)));
    }

    [Fact]
    public void Encode_EveryBoundary_MatchesReference()
    {
        var values = Boundaries().ToArray();
        Assert.True(values.Length > 700, $"{values.Length} values");
        foreach (var v in values)
        {
            Assert.True(Fp8Reference.Encode(v) == Fp8E4M3.Encode(v), $"{v:R} (0x{BitConverter.SingleToUInt32Bits(v):X8}): reference 0x{Fp8Reference.Encode(v):X2}, scalar 0x{Fp8E4M3.Encode(v):X2}");
        }
        AssertVectorMatches(values);
    }

    [Fact]
    public void Encode_EveryBf16_MatchesReference()
    {
        var values = Enumerable.Range(0, 1 << 16).Select(b => BitConverter.UInt32BitsToSingle((uint)b << 16)).ToArray();
        foreach (var v in values)
        {
            Assert.True(Fp8Reference.Encode(v) == Fp8E4M3.Encode(v), $"bf16 0x{BitConverter.SingleToUInt32Bits(v) >> 16:X4}");
        }
        AssertVectorMatches(values);
    }

    [Theory]
    [InlineData(0f, 0x00)]
    [InlineData(-0f, 0x80)]
    [InlineData(448f, 0x7E)]
    [InlineData(1e9f, 0x7E)]
    [InlineData(float.PositiveInfinity, 0x7E)]
    [InlineData(float.NegativeInfinity, 0xFE)]
    [InlineData(float.NaN, 0xFF)] // .NET's float.NaN has the sign bit set.
    [InlineData(0.0009765625f, 0x00)] // 2^-10: halfway between 0 and 2^-9, ties to the even code 0
    [InlineData(0.0029296875f, 0x02)] // 1.5 × 2^-9: halfway between codes 1 and 2, ties to 2
    [InlineData(1.0625f, 0x38)] // halfway between 1 and 1.125: ties to 1 (even mantissa)
    [InlineData(1.1875f, 0x3A)] // halfway between 1.125 and 1.25: ties to 1.25
    [InlineData(464f, 0x7E)] // would round up to 480, which E4M3fn lacks: saturates
    public void Encode_ChosenCases(float value, int code)
    {
        Assert.Equal((byte)code, Fp8E4M3.Encode(value));
        Assert.Equal((byte)code, Fp8Reference.Encode(value));
    }

    [Fact]
    public void Encode_PositiveNaN_Is0x7F() =>
        Assert.Equal(0x7F, Fp8E4M3.Encode(BitConverter.UInt32BitsToSingle(0x7FC0_0000)));

    private static void AssertVectorMatches(float[] values)
    {
        for (var i = 0; i < values.Length; i += 8)
        {
            var lanes = new float[8];
            Array.Copy(values, i, lanes, 0, Math.Min(8, values.Length - i));
            var codes = Fp8E4M3.Encode(Vector256.Create(lanes));
            for (var l = 0; l < 8; l++)
            {
                Assert.True(Fp8Reference.Encode(lanes[l]) == codes[l], $"vector lane {lanes[l]:R}: reference 0x{Fp8Reference.Encode(lanes[l]):X2}, got 0x{codes[l]:X2}");
            }
        }
    }
}
