using System.Diagnostics.CodeAnalysis;

namespace CheckpointEngine;

/// <summary>Sizes and names of <see cref="DType"/> values, and the byte length of a shape.</summary>
public static class DTypes
{
    private static readonly Dictionary<string, DType> ByName =
        Enum.GetValues<DType>().ToDictionary(d => d.ToString(), StringComparer.Ordinal);

    /// <summary>Every dtype name the format defines, in the enum's order.</summary>
    public static IReadOnlyCollection<string> Names => ByName.Keys;

    public static bool TryParse(string name, out DType dtype) => ByName.TryGetValue(name, out dtype);

    public static DType Parse(string name) =>
        TryParse(name, out var d) ? d : throw new ArgumentException($"unknown dtype '{name}'", nameof(name));

    public static string Name(this DType dtype) => dtype.ToString();

    /// <summary>Bits per element: 4 for F4, 6 for the F6 types, otherwise a multiple of 8.</summary>
    public static int BitSize(this DType dtype) => dtype switch
    {
        DType.F4 => 4,
        DType.F6_E2M3 or DType.F6_E3M2 => 6,
        DType.BOOL or DType.U8 or DType.I8 or DType.F8_E5M2 or DType.F8_E4M3 or DType.F8_E8M0
            or DType.F8_E4M3FNUZ or DType.F8_E5M2FNUZ => 8,
        DType.I16 or DType.U16 or DType.F16 or DType.BF16 => 16,
        DType.I32 or DType.U32 or DType.F32 => 32,
        DType.C64 or DType.F64 or DType.I64 or DType.U64 => 64,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a dtype"),
    };

    /// <summary>Natural alignment of one element in bytes (1 for sub-byte types).</summary>
    public static int Alignment(this DType dtype) => Math.Max(1, dtype.BitSize() / 8);

    /// <summary>Element count of a shape; a scalar (empty shape) has one element.</summary>
    public static bool TryElementCount(ReadOnlySpan<long> shape, out long count)
    {
        count = 1;
        foreach (var dim in shape)
        {
            if (dim < 0)
            {
                return false;
            }
            try
            {
                count = checked(count * dim);
            }
            catch (OverflowException)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// Byte length of a tensor of this dtype and shape. Fails when a dimension is negative, the size
    /// overflows, or a sub-byte tensor does not fill whole bytes (the format's rule).
    /// </summary>
    public static bool TryByteLength(this DType dtype, ReadOnlySpan<long> shape, out long bytes, [NotNullWhen(false)] out string? why)
    {
        bytes = 0;
        if (!TryElementCount(shape, out var count))
        {
            why = "shape has a negative dimension or its element count overflows";
            return false;
        }
        long bits;
        try
        {
            bits = checked(count * dtype.BitSize());
        }
        catch (OverflowException)
        {
            why = "byte length overflows";
            return false;
        }
        if (bits % 8 != 0)
        {
            why = $"{count} elements of {dtype} ({dtype.BitSize()} bits each) do not fill whole bytes";
            return false;
        }
        bytes = bits / 8;
        why = null;
        return true;
    }

    public static long ByteLength(this DType dtype, ReadOnlySpan<long> shape) =>
        dtype.TryByteLength(shape, out var bytes, out var why) ? bytes : throw new ArgumentException(why, nameof(shape));
}
