using System.Runtime.InteropServices;
using CheckpointEngine.Quantization;
using CsCheck;

namespace CheckpointEngine.Tests.Quantization;

/// <summary>Whole tensors through the vectorized, parallel kernels against the scalar reference: odd shapes, every 16-bit pattern, the chosen special cases.</summary>
public unsafe class Fp8BlockQuantizerTests
{
    internal static (byte[] Codes, float[] Scales) Quantize(DType dtype, byte[] data, long rows, long cols, int blockRows = 128, int blockCols = 128, int threads = 4)
    {
        var codes = new byte[rows * cols];
        var scales = new float[((rows + blockRows - 1) / blockRows) * ((cols + blockCols - 1) / blockCols)];
        fixed (byte* src = data)
        fixed (byte* dst = codes)
        fixed (float* s = scales)
        {
            Fp8BlockQuantizer.Quantize(new Fp8Tensor((nint)src, dtype, rows, cols, blockRows, blockCols, (nint)s), dst, threads);
        }
        return (codes, scales);
    }

    private static void AssertMatchesReference(DType dtype, byte[] data, long rows, long cols, int blockRows = 128, int blockCols = 128)
    {
        var (codes, scales) = Quantize(dtype, data, rows, cols, blockRows, blockCols);
        var (refCodes, refScales) = Fp8Reference.Quantize(dtype, data, rows, cols, blockRows, blockCols);
        Assert.Equal(refScales, scales);
        for (var i = 0; i < codes.Length; i++)
        {
            if (codes[i] != refCodes[i])
            {
                Assert.Fail($"{dtype} [{rows}, {cols}] block {blockRows}x{blockCols}: element {i} (row {i / cols}, col {i % cols}) = {Fp8Reference.ToFloat(dtype, data, i):R}: reference 0x{refCodes[i]:X2}, got 0x{codes[i]:X2}");
            }
        }
    }

    /// <summary>Values like a trained weight's (normal around 0, a few outliers) with ±∞, NaN and ±0 sprinkled in.</summary>
    internal static byte[] Weights(DType dtype, long count, int seed, bool specials = true)
    {
        var random = new Random(seed);
        var data = new byte[dtype.ByteLength([count])];
        for (var i = 0; i < count; i++)
        {
            var x = (float)(random.NextDouble() * 2 - 1) * (random.Next(50) == 0 ? 8f : 0.05f);
            if (specials && random.Next(997) == 0)
            {
                x = new[] { float.PositiveInfinity, float.NegativeInfinity, float.NaN, 0f, -0f }[random.Next(5)];
            }
            switch (dtype)
            {
                case DType.BF16:
                    MemoryMarshal.Cast<byte, ushort>(data.AsSpan())[i] = (ushort)(BitConverter.SingleToUInt32Bits(x) >> 16);
                    break;
                case DType.F16:
                    MemoryMarshal.Cast<byte, Half>(data.AsSpan())[i] = (Half)x;
                    break;
                default:
                    MemoryMarshal.Cast<byte, float>(data.AsSpan())[i] = x;
                    break;
            }
        }
        return data;
    }

    [Theory]
    [InlineData(DType.BF16, 129, 257, 128, 128)]
    [InlineData(DType.BF16, 1, 1, 128, 128)]
    [InlineData(DType.BF16, 1, 300, 128, 128)]
    [InlineData(DType.BF16, 300, 1, 128, 128)]
    [InlineData(DType.BF16, 256, 384, 128, 128)]
    [InlineData(DType.BF16, 65, 33, 7, 5)]
    [InlineData(DType.BF16, 100, 200, 64, 32)]
    [InlineData(DType.F16, 129, 257, 128, 128)]
    [InlineData(DType.F16, 3, 70, 2, 33)]
    [InlineData(DType.F32, 129, 257, 128, 128)]
    [InlineData(DType.F32, 31, 65, 16, 64)]
    public void Quantize_OddShapes_MatchReference(DType dtype, long rows, long cols, int blockRows, int blockCols) =>
        AssertMatchesReference(dtype, Weights(dtype, rows * cols, (int)(rows * 31 + cols)), rows, cols, blockRows, blockCols);

    [Theory]
    [InlineData(DType.BF16, 512, 128)]
    [InlineData(DType.BF16, 128, 512)]
    [InlineData(DType.F16, 512, 128)]
    [InlineData(DType.F16, 128, 512)]
    public void Quantize_Every16BitPattern_MatchesReference(DType dtype, long rows, long cols)
    {
        var data = new byte[1 << 17];
        var patterns = MemoryMarshal.Cast<byte, ushort>(data.AsSpan());
        for (var i = 0; i < patterns.Length; i++)
        {
            patterns[i] = (ushort)i;
        }
        AssertMatchesReference(dtype, data, rows, cols);
        AssertMatchesReference(dtype, data, rows, cols, 1, 1); // Every value its own block: x / (|x| / 448).
    }

    [Fact]
    public void Quantize_ZeroBlock_ScaleIsOneAndZerosKeepTheirSign()
    {
        var data = new byte[2 * 4 * 256];
        MemoryMarshal.Cast<byte, ushort>(data.AsSpan())[5] = 0x8000; // −0
        var (codes, scales) = Quantize(DType.BF16, data, 4, 256);
        Assert.Equal([1f, 1f], scales);
        Assert.Equal(0x80, codes[5]);
        Assert.Equal(codes.Length - 1, codes.Count(c => c == 0));
    }

    [Fact]
    public void Quantize_NonFinite_DoNotWidenTheScale_InfSaturates_NaNStaysNaN()
    {
        float[] values = [0.5f, -2f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, BitConverter.UInt32BitsToSingle(0x7FC0_0000), 1f, 0f];
        var data = MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
        var (codes, scales) = Quantize(DType.F32, data, 1, values.Length);
        Assert.Equal(2f / 448f, Assert.Single(scales));
        Assert.Equal([Fp8Reference.Encode(0.5f / (2f / 448f)), (byte)0xFE, (byte)0x7E, (byte)0xFE, (byte)0xFF, (byte)0x7F, Fp8Reference.Encode(1f / (2f / 448f)), (byte)0], codes);
        Assert.Equal(-2, Fp8Reference.Decode(codes[1]) * scales[0], 5); // the block's amax comes back exactly

        float[] onlySpecials = [float.PositiveInfinity, float.NaN, 0f];
        var (special, specialScales) = Quantize(DType.F32, MemoryMarshal.AsBytes(onlySpecials.AsSpan()).ToArray(), 1, 3);
        Assert.Equal([1f], specialScales);
        Assert.Equal([(byte)0x7E, (byte)0xFF, (byte)0], special);
    }

    [Fact]
    public void Quantize_RandomBf16_VectorPathEqualsScalarPathAndReference()
    {
        var gen = Gen.Select(Gen.Int[1, 150], Gen.Int[1, 150], Gen.OneOf(Gen.Const(1), Gen.Const(3), Gen.Const(16), Gen.Const(32), Gen.Const(128)), Gen.OneOf(Gen.Const(1), Gen.Const(5), Gen.Const(64), Gen.Const(128)))
            .SelectMany(s => Gen.UShort.Array[s.Item1 * s.Item2], (s, bits) => (Rows: s.Item1, Cols: s.Item2, BlockRows: s.Item3, BlockCols: s.Item4, Bits: bits));
        gen.Sample(c =>
        {
            var data = MemoryMarshal.AsBytes(c.Bits.AsSpan()).ToArray();
            var (codes, scales) = Quantize(DType.BF16, data, c.Rows, c.Cols, c.BlockRows, c.BlockCols);
            var colBlocks = (c.Cols + c.BlockCols - 1) / c.BlockCols;
            for (var i = 0; i < codes.Length; i++)
            {
                var scale = scales[(i / c.Cols / c.BlockRows) * colBlocks + (i % c.Cols) / c.BlockCols];
                var scalar = Fp8E4M3.Encode(BitConverter.UInt32BitsToSingle((uint)c.Bits[i] << 16) / scale);
                if (scalar != codes[i])
                {
                    return false;
                }
            }
            var (refCodes, refScales) = Fp8Reference.Quantize(DType.BF16, data, c.Rows, c.Cols, c.BlockRows, c.BlockCols);
            return refCodes.AsSpan().SequenceEqual(codes) && refScales.AsSpan().SequenceEqual(scales);
        }, iter: 40);
    }
}
