using System.Globalization;

namespace CheckpointEngine.Hosting;

/// <summary>Byte counts as people write them: parsed from flags (64MiB, 1GiB, 512MB, 1048576) and printed in reports.</summary>
public static class ByteSize
{
    private static readonly (string Suffix, long Factor)[] Units =
        [("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000), ("B", 1)];

    /// <summary>A positive size with an optional unit (binary or decimal); false for anything else.</summary>
    public static bool TryParse(string text, out long bytes)
    {
        bytes = 0;
        var t = text.Trim();
        var unit = Units.FirstOrDefault(u => t.EndsWith(u.Suffix, StringComparison.OrdinalIgnoreCase));
        var number = unit.Suffix is null ? t : t[..^unit.Suffix.Length];
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var n) || n <= 0)
        {
            return false;
        }
        bytes = (long)(n * (unit.Suffix is null ? 1 : unit.Factor));
        return true;
    }

    /// <summary>"512 B", "1.5 KiB", "64.0 MiB", "1.00 GiB".</summary>
    public static string Format(long n) => n switch
    {
        < 1024 => $"{n} B",
        < 1L << 20 => $"{n / 1024.0:F1} KiB",
        < 1L << 30 => $"{n / (double)(1L << 20):F1} MiB",
        _ => $"{n / (double)(1L << 30):F2} GiB",
    };
}
