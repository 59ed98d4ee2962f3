using System.Runtime.InteropServices;

namespace CheckpointEngine.Tests.Quantization;

/// <summary>
/// The scalar reference the product is checked against, written from the format's definition and nothing
/// of the product's: the 256 E4M3fn codes decoded to doubles, the nearest picked by brute force (ties to the
/// even code), then the project's stated choices (beyond ±448 and ±∞ saturate to ±448, NaN stays NaN with
/// its sign, a block's scale ignores non-finite elements and is 1.0 where amax / 448 is 0).
/// </summary>
internal static class Fp8Reference
{
    /// <summary>Every code's value; NaN for 0x7F and 0xFF.</summary>
    public static readonly double[] Values = [.. Enumerable.Range(0, 256).Select(Decode)];

    public static double Decode(int code)
    {
        var (negative, exponent, mantissa) = (code >> 7 == 1, (code >> 3) & 0xF, code & 7);
        if (exponent == 15 && mantissa == 7)
        {
            return double.NaN;
        }
        var magnitude = exponent == 0 ? mantissa / 8.0 * Math.Pow(2, -6) : (1 + mantissa / 8.0) * Math.Pow(2, exponent - 7);
        return negative ? -magnitude : magnitude;
    }

    public static byte Encode(float x)
    {
        var negative = BitConverter.SingleToUInt32Bits(x) >> 31 == 1;
        if (float.IsNaN(x))
        {
            return negative ? (byte)0xFF : (byte)0x7F;
        }
        if (Math.Abs((double)x) > 448)
        {
            return negative ? (byte)0xFE : (byte)0x7E;
        }
        var best = -1;
        var bestDistance = double.PositiveInfinity;
        for (var code = negative ? 0x80 : 0; code < (negative ? 0x100 : 0x80); code++)
        {
            if (double.IsNaN(Values[code]))
            {
                continue;
            }
            var distance = Math.Abs(x - Values[code]);
            if (distance < bestDistance || (distance == bestDistance && (code & 1) == 0))
            {
                (best, bestDistance) = (code, distance);
            }
        }
        return (byte)best;
    }

    public static float ToFloat(DType dtype, ReadOnlySpan<byte> data, long i) => dtype switch
    {
        DType.BF16 => BitConverter.UInt32BitsToSingle((uint)MemoryMarshal.Cast<byte, ushort>(data)[(int)i] << 16),
        DType.F16 => (float)MemoryMarshal.Cast<byte, Half>(data)[(int)i],
        DType.F32 => MemoryMarshal.Cast<byte, float>(data)[(int)i],
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>A whole [rows, cols] tensor: the F8 bytes and the scales, row-major.</summary>
    public static (byte[] Codes, float[] Scales) Quantize(DType dtype, byte[] data, long rows, long cols, int blockRows, int blockCols)
    {
        var (rb, cb) = ((rows + blockRows - 1) / blockRows, (cols + blockCols - 1) / blockCols);
        var codes = new byte[rows * cols];
        var scales = new float[rb * cb];
        for (long i = 0; i < rb; i++)
        {
            for (long j = 0; j < cb; j++)
            {
                var amax = 0f;
                for (var r = i * blockRows; r < Math.Min(rows, (i + 1) * blockRows); r++)
                {
                    for (var c = j * blockCols; c < Math.Min(cols, (j + 1) * blockCols); c++)
                    {
                        var x = ToFloat(dtype, data, r * cols + c);
                        if (float.IsFinite(x))
                        {
                            amax = Math.Max(amax, Math.Abs(x));
                        }
                    }
                }
                var scale = amax / 448f;
                scale = scale == 0 ? 1f : scale;
                scales[i * cb + j] = scale;
                for (var r = i * blockRows; r < Math.Min(rows, (i + 1) * blockRows); r++)
                {
                    for (var c = j * blockCols; c < Math.Min(cols, (j + 1) * blockCols); c++)
                    {
                        codes[r * cols + c] = Encode(ToFloat(dtype, data, r * cols + c) / scale);
                    }
                }
            }
        }
        return (codes, scales);
    }
}
