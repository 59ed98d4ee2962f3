using System.Globalization;
using System.IO.Hashing;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>
/// The per-tensor checksum of the worker protocol: the IEEE CRC-32 of the tensor's bytes (what Python's
/// <c>zlib.crc32</c> computes), written as 8 lowercase hex digits of its value. Large tensors are hashed
/// in pieces on all cores and the pieces' CRCs combined, so one big tensor does not run on one core.
/// </summary>
public static unsafe class TensorChecksum
{
    /// <summary>Bytes per piece: large enough that combining costs nothing, small enough to spread a tensor over the cores.</summary>
    public const long Piece = 16L << 20;

    private const uint Polynomial = 0xEDB88320; // Reflected IEEE 802.3 polynomial.

    /// <summary>x^(2^n) mod P for n = 0..31, the powers that shift a CRC over a run of zero bytes.</summary>
    private static readonly uint[] PowersOfX = MakePowers();

    /// <summary>CRC-32 of <paramref name="length"/> bytes at <paramref name="pointer"/>, on this thread.</summary>
    public static uint Crc32(byte* pointer, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (length <= int.MaxValue)
        {
            return System.IO.Hashing.Crc32.HashToUInt32(new ReadOnlySpan<byte>(pointer, (int)length));
        }
        var crc = new Crc32();
        for (long done = 0; done < length; done += 1 << 30)
        {
            crc.Append(new ReadOnlySpan<byte>(pointer + done, (int)Math.Min(1 << 30, length - done)));
        }
        return crc.GetCurrentHashAsUInt32();
    }

    public static uint Crc32(ReadOnlySpan<byte> bytes) => System.IO.Hashing.Crc32.HashToUInt32(bytes);

    /// <summary>CRC-32 of host bytes, in <see cref="Piece"/>s on up to <paramref name="threads"/> threads (default: all cores).</summary>
    public static uint Crc32Parallel(byte* pointer, long length, int threads = -1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var pieces = (int)((length + Piece - 1) / Piece);
        if (pieces <= 1)
        {
            return Crc32(pointer, length);
        }
        var crcs = new uint[pieces];
        var at = (nint)pointer;
        Parallel.For(0, pieces, new ParallelOptions { MaxDegreeOfParallelism = threads }, i =>
            crcs[i] = Crc32((byte*)at + i * Piece, Math.Min(Piece, length - i * Piece)));
        return CombinePieces(crcs, length);
    }

    /// <summary>The CRC of a tensor of <paramref name="length"/> bytes from the CRCs of its consecutive <see cref="Piece"/>s.</summary>
    public static uint CombinePieces(ReadOnlySpan<uint> pieceCrcs, long length)
    {
        var crc = 0u;
        for (var i = 0; i < pieceCrcs.Length; i++)
        {
            crc = Combine(crc, pieceCrcs[i], Math.Min(Piece, length - i * Piece));
        }
        return crc;
    }

    /// <summary>CRC-32 of A followed by B, from CRC(A), CRC(B) and B's length (zlib's crc32_combine, by the same algebra).</summary>
    public static uint Combine(uint first, uint second, long secondLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(secondLength);
        // Appending n bytes multiplies CRC(A) by x^(8n) mod P (the initial and final inversions cancel out).
        var shift = 1u << 31; // x^0 in reflected order.
        var k = 3; // 8n = n·2^3: start from x^(2^3).
        for (var n = secondLength; n != 0; n >>= 1, k++)
        {
            if ((n & 1) != 0)
            {
                shift = Multiply(PowersOfX[k & 31], shift);
            }
        }
        return Multiply(shift, first) ^ second;
    }

    /// <summary>The checksum as the protocol writes it: 8 lowercase hex digits of the value (Python: <c>format(zlib.crc32(b), "08x")</c>).</summary>
    public static string Hex(uint crc) => crc.ToString("x8", CultureInfo.InvariantCulture);

    /// <summary>Parses 8 hex digits (either case); false for anything else.</summary>
    public static bool TryParseHex(string? text, out uint crc)
    {
        crc = 0;
        return text is { Length: 8 } && text.All(char.IsAsciiHexDigit) && uint.TryParse(text, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out crc);
    }

    /// <summary>
    /// The checksum of a received tensor. In GPU memory it is copied to the host first, in pieces through one
    /// staging buffer of up to 64 MiB (a device-to-host copy of every byte: PCIe time, about 20–50 GB/s).
    /// </summary>
    public static uint Crc32(ReceivedTensor view)
    {
        if (!view.OnDevice && view.IsPacked)
        {
            return Crc32Parallel(view.Pointer, view.Length);
        }
        if (!view.OnDevice)
        {
            var rows = 0u;
            for (long i = 0; i < view.Rows; i++)
            {
                rows = Combine(rows, Crc32Parallel(view.Pointer + (i * view.Pitch), view.RowBytes), view.RowBytes); // A part in place: its rows in order.
            }
            return rows;
        }
        using var host = NativeBuffer.Allocate(Math.Max(1, Math.Min(view.Length, 4 * Piece)));
        var crc = 0u;
        for (long done = 0; done < view.Length; done += host.Capacity)
        {
            var n = Math.Min(host.Capacity, view.Length - done);
            new ReceivedTensor(view.Name, view.DType, view.Shape, view.Offset + done, n, view.Pointer + done, view.DeviceContext).CopyTo(host.Pointer);
            crc = Combine(crc, Crc32Parallel(host.Pointer, n), n);
        }
        return crc;
    }

    /// <summary>a·b mod P, polynomials in reflected bit order (bit 31 is x^0).</summary>
    private static uint Multiply(uint a, uint b)
    {
        var product = 0u;
        for (var m = 1u << 31; m != 0; m >>= 1)
        {
            if ((a & m) != 0)
            {
                product ^= b;
            }
            b = (b & 1) != 0 ? (b >> 1) ^ Polynomial : b >> 1;
        }
        return product;
    }

    private static uint[] MakePowers()
    {
        var powers = new uint[32];
        var p = 1u << 30; // x^1
        for (var i = 0; i < powers.Length; i++)
        {
            powers[i] = p;
            p = Multiply(p, p);
        }
        return powers;
    }
}
