using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace CheckpointEngine.Quantization;

/// <summary>
/// One 2-D tensor to quantize: BF16, F16 or F32 source rows (row-major) into F8_E4M3 and one F32
/// <c>scale_inv</c> per block of <see cref="BlockRows"/> × <see cref="BlockCols"/> elements, in the
/// DeepSeek-V3 convention (<c>fp8 × scale_inv</c> dequantizes). Pointers are the caller's memory.
/// </summary>
internal readonly record struct Fp8Tensor(nint Source, DType DType, long Rows, long Cols, int BlockRows, int BlockCols, nint Scales)
{
    public long RowBlocks => (Rows + BlockRows - 1) / BlockRows;

    public long ColBlocks => (Cols + BlockCols - 1) / BlockCols;

    /// <summary>Elements of the rows of <paramref name="rowBlock"/> (what its destination holds, one byte each).</summary>
    public long RowBlockElements(long rowBlock) => (Math.Min(Rows, (rowBlock + 1) * BlockRows) - rowBlock * BlockRows) * Cols;
}

/// <summary>
/// The quantization kernels (System.Runtime.Intrinsics, 32 elements a step; a scalar loop for the
/// tail). Per block: <c>amax</c> = the largest |x| over its finite elements (±∞ and NaN do not
/// widen a block's range), <c>scale_inv = amax / 448</c> in float, 1.0 where that is 0 (a block of
/// zeros, or one so tiny that amax / 448 underflows: its elements still encode as ±0 or their own
/// nearest code, and dequantize exactly as they were encoded); then each element
/// <see cref="Fp8E4M3.Encode(float)"/>(x / scale_inv), the division in float. Row blocks are
/// independent, which is how callers spread a tensor over threads.
/// </summary>
internal static unsafe class Fp8BlockQuantizer
{
    public static bool Supports(DType dtype) => dtype is DType.BF16 or DType.F16 or DType.F32;

    /// <summary>Quantizes the rows of <paramref name="rowBlock"/> into <paramref name="destination"/> (its first row) and writes their scales.</summary>
    public static void QuantizeRowBlock(in Fp8Tensor t, long rowBlock, byte* destination) => Run(t, rowBlock, destination);

    /// <summary>Only the scales of <paramref name="rowBlock"/> (the same values <see cref="QuantizeRowBlock"/> writes).</summary>
    public static void ScaleRowBlock(in Fp8Tensor t, long rowBlock) => Run(t, rowBlock, null);

    /// <summary>The whole tensor, row blocks spread over <paramref name="threads"/>.</summary>
    public static void Quantize(Fp8Tensor t, byte* destination, int threads)
    {
        var dst = (nint)destination;
        Parallel.For(0, t.RowBlocks, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) },
            rb => QuantizeRowBlock(t, rb, (byte*)dst + rb * t.BlockRows * t.Cols));
    }

    /// <summary>
    /// Two passes over the row block, each reading whole rows front to back (what prefetchers and the TLB like;
    /// a row block of a 7168-wide BF16 weight is 1.8 MB, so the second pass reads it from cache): the amax of
    /// every block, one vector accumulator per column block, then the encoding.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // Hot SIMD loops: optimized from the first call, not after tiering.
    private static void Run(in Fp8Tensor t, long rowBlock, byte* destination)
    {
        var size = t.DType == DType.F32 ? 4 : 2;
        var r0 = rowBlock * t.BlockRows;
        var rows = (int)(Math.Min(t.Rows, r0 + t.BlockRows) - r0);
        var colBlocks = (int)t.ColBlocks;
        var scales = (float*)t.Scales + rowBlock * colBlocks;
        var first = (byte*)t.Source + r0 * t.Cols * size;
        var pooled = colBlocks > 256 ? System.Buffers.ArrayPool<Vector256<uint>>.Shared.Rent(colBlocks) : null;
        try
        {
            var acc = pooled is null ? stackalloc Vector256<uint>[colBlocks] : pooled.AsSpan(0, colBlocks);
            acc.Clear();
            for (var r = 0; r < rows; r++)
            {
                var row = first + r * t.Cols * size;
                for (var cb = 0; cb < colBlocks; cb++)
                {
                    var c0 = (long)cb * t.BlockCols;
                    acc[cb] = AmaxBits(row + c0 * size, (int)Math.Min(t.BlockCols, t.Cols - c0), t.DType, acc[cb]);
                }
            }
            for (var cb = 0; cb < colBlocks; cb++)
            {
                var lanes = acc[cb];
                uint max = 0;
                for (var l = 0; l < Vector256<uint>.Count; l++)
                {
                    max = Math.Max(max, lanes[l]);
                }
                scales[cb] = Scale(t.DType, max);
            }
        }
        finally
        {
            if (pooled is not null)
            {
                System.Buffers.ArrayPool<Vector256<uint>>.Shared.Return(pooled);
            }
        }
        if (destination is null)
        {
            return;
        }
        for (var r = 0; r < rows; r++)
        {
            var row = first + r * t.Cols * size;
            var dst = destination + r * t.Cols;
            for (var cb = 0; cb < colBlocks; cb++)
            {
                var c0 = (long)cb * t.BlockCols;
                var n = (int)Math.Min(t.BlockCols, t.Cols - c0);
                switch (t.DType)
                {
                    case DType.BF16:
                        EncodeBf16((ushort*)(row + c0 * size), n, scales[cb], dst + c0);
                        break;
                    case DType.F16:
                        EncodeF16((ushort*)(row + c0 * size), n, scales[cb], dst + c0);
                        break;
                    default:
                        EncodeSingles((float*)(row + c0 * size), n, scales[cb], dst + c0);
                        break;
                }
            }
        }
    }

    /// <summary>scale_inv from a block's amax (as source bits).</summary>
    private static float Scale(DType dtype, uint amaxBits)
    {
        var amax = dtype switch
        {
            DType.BF16 => BitConverter.UInt32BitsToSingle(amaxBits << 16),
            DType.F16 => (float)BitConverter.UInt16BitsToHalf((ushort)amaxBits),
            _ => BitConverter.UInt32BitsToSingle(amaxBits),
        };
        var scale = amax / Fp8E4M3.MaxValue;
        return scale == 0 ? 1f : scale;
    }

    /// <summary>
    /// Folds the largest finite |x| of a row segment, as bits, into <paramref name="acc"/> (any lane): magnitudes
    /// order like their bit patterns once the sign is cleared, so this is an integer max with ±∞ and NaN masked to 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector256<uint> AmaxBits(byte* segment, int n, DType dtype, Vector256<uint> acc)
    {
        if (dtype == DType.F32)
        {
            var p = (uint*)segment;
            var vmax = acc.AsInt32();
            var i = 0;
            for (; i + 8 <= n; i += 8)
            {
                var a = Vector256.Load(p + i).AsInt32() & Vector256.Create(0x7FFF_FFFF);
                vmax = Vector256.Max(vmax, a & Vector256.LessThan(a, Vector256.Create(0x7F80_0000)));
            }
            uint max = 0;
            for (; i < n; i++)
            {
                var a = p[i] & 0x7FFF_FFFF;
                max = a < 0x7F80_0000 ? Math.Max(max, a) : max;
            }
            return Vector256.Max(vmax.AsUInt32(), Vector256.CreateScalar(max));
        }
        else
        {
            var p = (ushort*)segment;
            var limit = (short)(dtype == DType.BF16 ? 0x7F80 : 0x7C00);
            var vmax = Vector256<short>.Zero;
            var i = 0;
            for (; i + 16 <= n; i += 16)
            {
                var a = Vector256.Load(p + i).AsInt16() & Vector256.Create((short)0x7FFF);
                vmax = Vector256.Max(vmax, a & Vector256.LessThan(a, Vector256.Create(limit)));
            }
            uint max = 0;
            for (; i < n; i++)
            {
                var a = (uint)(p[i] & 0x7FFF);
                max = a < (uint)limit ? Math.Max(max, a) : max;
            }
            // Both halves of each 32-bit lane are magnitudes: keep the larger, in the low half.
            var lanes = vmax.AsUInt32();
            var folded = Vector256.Max(lanes & Vector256.Create(0xFFFFu), Vector256.ShiftRightLogical(lanes, 16));
            return Vector256.Max(acc, Vector256.Max(folded, Vector256.CreateScalar(max)));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void EncodeBf16(ushort* p, int n, float scale, byte* dst)
    {
        var s = Vector256.Create(scale);
        var i = 0;
        for (; i + 32 <= n; i += 32)
        {
            var (a, b) = Vector256.Widen(Vector256.Load(p + i));
            var (c, d) = Vector256.Widen(Vector256.Load(p + i + 16));
            var low = Vector256.Narrow(Fp8E4M3.Encode(Vector256.ShiftLeft(a, 16).AsSingle() / s), Fp8E4M3.Encode(Vector256.ShiftLeft(b, 16).AsSingle() / s));
            var high = Vector256.Narrow(Fp8E4M3.Encode(Vector256.ShiftLeft(c, 16).AsSingle() / s), Fp8E4M3.Encode(Vector256.ShiftLeft(d, 16).AsSingle() / s));
            Vector256.Narrow(low, high).Store(dst + i);
        }
        for (; i < n; i++)
        {
            dst[i] = Fp8E4M3.Encode(BitConverter.UInt32BitsToSingle((uint)p[i] << 16) / scale);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void EncodeF16(ushort* p, int n, float scale, byte* dst)
    {
        var s = Vector256.Create(scale);
        var i = 0;
        for (; i + 32 <= n; i += 32)
        {
            var (a, b) = Vector256.Widen(Vector256.Load(p + i));
            var (c, d) = Vector256.Widen(Vector256.Load(p + i + 16));
            var low = Vector256.Narrow(Fp8E4M3.Encode(HalfToSingle(a) / s), Fp8E4M3.Encode(HalfToSingle(b) / s));
            var high = Vector256.Narrow(Fp8E4M3.Encode(HalfToSingle(c) / s), Fp8E4M3.Encode(HalfToSingle(d) / s));
            Vector256.Narrow(low, high).Store(dst + i);
        }
        for (; i < n; i++)
        {
            dst[i] = Fp8E4M3.Encode((float)BitConverter.UInt16BitsToHalf(p[i]) / scale);
        }
    }

    /// <summary>
    /// F16 bits (one per lane) to float, exactly: the magnitude's bits moved into float position and scaled by
    /// 2^112 (right for normals and subnormals alike); ±∞ and NaN get the float exponent of all ones.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToSingle(Vector256<uint> h)
    {
        var a = h & Vector256.Create(0x7FFFu);
        var magnitude = (Vector256.ShiftLeft(a, 13).AsSingle() * Vector256.Create(0x7780_0000u).AsSingle()).AsUInt32(); // × 2^112
        var special = Vector256.ShiftLeft(a, 13) | Vector256.Create(0x7F80_0000u);
        var value = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(a.AsInt32(), Vector256.Create(0x7C00)).AsUInt32(), special, magnitude);
        return (value | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void EncodeSingles(float* src, int n, float scale, byte* dst)
    {
        var s = Vector256.Create(scale);
        var i = 0;
        for (; i + 32 <= n; i += 32)
        {
            var low = Vector256.Narrow(Fp8E4M3.Encode(Vector256.Load(src + i) / s), Fp8E4M3.Encode(Vector256.Load(src + i + 8) / s));
            var high = Vector256.Narrow(Fp8E4M3.Encode(Vector256.Load(src + i + 16) / s), Fp8E4M3.Encode(Vector256.Load(src + i + 24) / s));
            Vector256.Narrow(low, high).Store(dst + i);
        }
        for (; i < n; i++)
        {
            dst[i] = Fp8E4M3.Encode(src[i] / scale);
        }
    }
}
