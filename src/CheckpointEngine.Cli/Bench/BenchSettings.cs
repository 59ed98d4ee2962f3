using CheckpointEngine.Hosting;
using System.Globalization;
using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// What <c>ckpt-engine bench</c> measures: every combination of ranks × size × method, each launched
/// <see cref="Repeat"/> + 1 times (the first is a warm-up). The list parsers report the bad element.
/// </summary>
/// <param name="TraceDirectory">Where each configuration's last update is written as a trace (trace-METHOD-Nr-SIZE.json), or null.</param>
internal sealed record BenchSettings(IReadOnlyList<int> Ranks, IReadOnlyList<long> Sizes, IReadOnlyList<string> Methods, long? BucketSize, int Repeat, string? TraceDirectory = null,
    Runtime.DeviceKind Device = Runtime.DeviceKind.Host, string? Model = null)
{
    public const int MaxRanks = 64;
    public const int MaxRepeat = 100;
    public const long MinSize = 1L << 20;
    public static readonly string[] KnownMethods = ["broadcast", "p2p"];

    /// <summary>Ranks like "1,2,4": each in [1, <see cref="MaxRanks"/>], no repeats.</summary>
    public static bool TryParseRanks(string text, out IReadOnlyList<int> ranks, out string error)
    {
        var list = new List<int>();
        ranks = list;
        foreach (var item in Items(text))
        {
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n is < 1 or > MaxRanks)
            {
                error = $"--ranks: '{item}' is not a rank count in [1, {MaxRanks}]";
                return false;
            }
            list.Add(n);
        }
        return Check("--ranks", text, list, out error);
    }

    /// <summary>Sizes like "256MiB,2GiB" (units as for <c>demo --size</c>): each at least 1 MiB, no repeats.</summary>
    public static bool TryParseSizes(string text, out IReadOnlyList<long> sizes, out string error)
    {
        var list = new List<long>();
        sizes = list;
        foreach (var item in Items(text))
        {
            if (!ByteSize.TryParse(item, out var bytes) || bytes < MinSize)
            {
                error = $"--size: '{item}' is not a size of at least 1MiB (e.g. 256MiB, 2GiB)";
                return false;
            }
            list.Add(bytes);
        }
        return Check("--size", text, list, out error);
    }

    /// <summary>Methods like "broadcast,p2p".</summary>
    public static bool TryParseMethods(string text, out IReadOnlyList<string> methods, out string error)
    {
        var list = new List<string>();
        methods = list;
        foreach (var item in Items(text))
        {
            if (!KnownMethods.Contains(item, StringComparer.Ordinal))
            {
                error = $"--method: '{item}' is not one of {string.Join(", ", KnownMethods)}";
                return false;
            }
            list.Add(item);
        }
        return Check("--method", text, list, out error);
    }

    /// <summary>A size as it was asked for: 256MiB, 2GiB, 1.5GiB; plain bytes otherwise.</summary>
    public static string SizeLabel(long bytes)
    {
        foreach (var (suffix, unit) in new[] { ("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10) })
        {
            if (bytes >= unit && bytes * 10 % unit == 0)
            {
                return (bytes / (double)unit).ToString("0.#", CultureInfo.InvariantCulture) + suffix;
            }
        }
        return bytes.ToString(CultureInfo.InvariantCulture) + "B";
    }

    private static IEnumerable<string> Items(string text) =>
        string.IsNullOrWhiteSpace(text) ? [] : text.Split(',').Select(s => s.Trim());

    private static bool Check<T>(string flag, string text, List<T> list, out string error)
    {
        error = "";
        if (list.Count == 0)
        {
            error = $"{flag}: give at least one value";
            return false;
        }
        if (list.Distinct().Count() != list.Count)
        {
            error = $"{flag}: '{text}' lists a value twice";
            return false;
        }
        return true;
    }
}
