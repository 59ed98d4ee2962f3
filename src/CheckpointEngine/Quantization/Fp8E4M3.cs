using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace CheckpointEngine.Quantization;

/// <summary>
/// Float → OCP FP8 E4M3 "fn" (bias 7, no infinities, NaN = S.1111.111, largest ±448), rounding to
/// nearest with ties to even, saturating: every finite value past ±448 and ±∞ become ±448 (0x7E/0xFE);
/// NaN stays NaN with its sign (0x7F/0xFF); −0 stays −0 (0x80). The vector and scalar forms do the same
/// integer arithmetic on the float's bits, so they agree on every input.
/// </summary>
public static class Fp8E4M3
{
    public const float MaxValue = 448f;

    private const uint AbsMask = 0x7FFF_FFFF;
    private const uint MaxBits = 0x43E0_0000; // 448f
    private const uint InfBits = 0x7F80_0000;
    private const uint MinNormalBits = 0x3C80_0000; // 2^-6, E4M3's smallest normal
    private const float SubnormalMagic = 16384f; // 2^14: its ulp is 2^-9, E4M3's subnormal step
    private const uint SubnormalMagicBits = 0x4680_0000;
    private const uint Rebias = (127 - 7) << 3;
    private const byte MaxCode = 0x7E;
    private const byte NaNCode = 0x7F;

    public static byte Encode(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        var a = bits & AbsMask;
        var sign = (bits >> 24) & 0x80;
        uint code;
        if (a > InfBits)
        {
            code = NaNCode;
        }
        else if (a > MaxBits)
        {
            code = MaxCode;
        }
        else if (a < MinNormalBits)
        {
            // Adding 2^14 rounds |v| to a multiple of 2^-9 (ties to even) in the float add itself.
            code = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + SubnormalMagic) - SubnormalMagicBits;
        }
        else
        {
            // Drop 20 mantissa bits with round-half-even; a carry moves into the exponent as it should.
            code = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - Rebias;
        }
        return (byte)(code | sign);
    }

    /// <summary><see cref="Encode(float)"/> on eight lanes; the codes come back in the low byte of each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Encode(Vector256<float> value)
    {
        // |v| < 2^31 as bits, so the comparisons below can be the signed ones the hardware has.
        var bits = value.AsUInt32();
        var a = bits & Vector256.Create(AbsMask);
        var sign = Vector256.ShiftRightLogical(bits, 24) & Vector256.Create(0x80u);
        // Clamped to 448 first, ±∞ and everything past it encode as 0x7E on the normal path; the rebias is
        // folded into the rounding constant (normals lie above it; other lanes are discarded).
        var c = Vector256.Min(a.AsInt32(), Vector256.Create((int)MaxBits)).AsUInt32();
        var normal = Vector256.ShiftRightLogical(c + Vector256.Create(unchecked(0x7FFFFu - (Rebias << 20))) + (Vector256.ShiftRightLogical(c, 20) & Vector256<uint>.One), 20);
        var subnormal = (a.AsSingle() + Vector256.Create(SubnormalMagic)).AsUInt32() - Vector256.Create(SubnormalMagicBits);
        var code = Vector256.ConditionalSelect(Vector256.LessThan(a.AsInt32(), Vector256.Create((int)MinNormalBits)).AsUInt32(), subnormal, normal);
        code = Vector256.ConditionalSelect(Vector256.GreaterThan(a.AsInt32(), Vector256.Create((int)InfBits)).AsUInt32(), Vector256.Create((uint)NaNCode), code);
        return code | sign;
    }
}
