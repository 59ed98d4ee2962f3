using System.Globalization;

namespace CheckpointEngine.Cli.Progress;

/// <summary>
/// The machine line a rank's <c>update</c> prints for the launcher's progress view when
/// <see cref="Variable"/> asks for it: <c>progress stage=S bucket=K/N bytes=D/T seconds=E</c>
/// (<c>seconds</c>: time in the stage). Read by key, so fields added later are ignored.
/// </summary>
internal sealed record ProgressLine(string Stage, int BucketsDone = 0, int BucketsTotal = 0, long BytesDone = 0, long BytesTotal = 0, double Seconds = 0)
{
    /// <summary>Set to <c>lines</c> by a launcher that renders the ranks' progress: the ranks then print these lines instead of their own progress.</summary>
    public const string Variable = "CKPT_ENGINE_PROGRESS";

    private const string Marker = "progress ";

    public string Format() => string.Create(CultureInfo.InvariantCulture,
        $"{Marker}stage={Stage.Replace(' ', '-')} bucket={BucketsDone}/{BucketsTotal} bytes={BytesDone}/{BytesTotal} seconds={Seconds:F3}");

    /// <summary>Parses a bare line (no launcher prefix); false for any other line.</summary>
    public static bool TryParse(string line, out ProgressLine progress)
    {
        progress = null!;
        if (!line.StartsWith(Marker, StringComparison.Ordinal))
        {
            return false;
        }
        var fields = line[Marker.Length..].TrimEnd('\r').Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(f => f.Split('=', 2)).Where(kv => kv.Length == 2).GroupBy(kv => kv[0], StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Last()[1], StringComparer.Ordinal);
        if (!fields.TryGetValue("stage", out var stage) || stage.Length == 0)
        {
            return false;
        }
        static (long, long) Pair(Dictionary<string, string> f, string key) =>
            f.TryGetValue(key, out var v) && v.Split('/') is [var a, var b]
            && long.TryParse(a, NumberStyles.None, CultureInfo.InvariantCulture, out var x) && long.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out var y) ? (x, y) : (0, 0);
        var (k, n) = Pair(fields, "bucket");
        var (done, total) = Pair(fields, "bytes");
        var seconds = fields.TryGetValue("seconds", out var s) && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : 0;
        progress = new ProgressLine(stage.Replace('-', ' '), (int)Math.Min(k, int.MaxValue), (int)Math.Min(n, int.MaxValue), done, total, seconds);
        return true;
    }
}
