using System.Globalization;
using CheckpointEngine.Cli.Bench;
using CheckpointEngine.Hosting;

namespace CheckpointEngine.Cli.Progress;

/// <summary>
/// What the launcher knows of its ranks from their output: each rank's last progress line and every
/// result line. Fed with the lines as the launcher forwards them (<c>[rank R] ...</c>); thread-safe.
/// </summary>
internal sealed class RankBoard(int ranks)
{
    private readonly Lock _lock = new();
    private readonly ProgressLine?[] _progress = new ProgressLine?[ranks];
    private readonly List<ResultLine> _results = [];
    private int _version;

    /// <summary>Bumped by every progress line: a renderer redraws only when it moved.</summary>
    public int Version => Volatile.Read(ref _version);

    public IReadOnlyList<ResultLine> Results
    {
        get
        {
            lock (_lock)
            {
                return [.. _results];
            }
        }
    }

    public IReadOnlyList<ProgressLine?> Ranks
    {
        get
        {
            lock (_lock)
            {
                return [.. _progress];
            }
        }
    }

    /// <summary>Records a progress or result line; true when it was a progress line (the view shows it, no need to print it).</summary>
    public bool Apply(string line)
    {
        if (!TrySplit(line, out var rank, out var text) || rank >= _progress.Length)
        {
            return false;
        }
        if (ProgressLine.TryParse(text, out var progress))
        {
            lock (_lock)
            {
                _progress[rank] = progress;
                _version++;
            }
            return true;
        }
        if (ResultLine.TryParse(line, out var result))
        {
            lock (_lock)
            {
                _results.Add(result);
            }
        }
        return false;
    }

    /// <summary>One line for logs: <c>progress: rank 0 broadcast 3/8 24.0 MiB/64.0 MiB 1.20 GB/s ETA 1 s | rank 1 ...</c>.</summary>
    public string Line() =>
        "progress: " + string.Join(" | ", Ranks.Select((p, r) => $"rank {r} " + (p is null ? "starting" : Describe(p))));

    /// <summary>A rank's stage, buckets, bytes, rate and ETA as words (what the live view shows in columns).</summary>
    public static string Describe(ProgressLine p) =>
        p.BucketsTotal == 0 ? p.Stage : $"{p.Stage} {Buckets(p)} {Bytes(p)} {Rate(p)} ETA {Eta(p)}";

    public static string Buckets(ProgressLine p) => p.BucketsTotal == 0 ? "" : $"{p.BucketsDone}/{p.BucketsTotal}";

    public static string Bytes(ProgressLine p) => p.BytesTotal == 0 ? "" : $"{ByteSize.Format(p.BytesDone)}/{ByteSize.Format(p.BytesTotal)}";

    public static string Rate(ProgressLine p) =>
        p.BytesTotal == 0 || p.Seconds <= 0 ? "" : string.Create(CultureInfo.InvariantCulture, $"{p.BytesDone / p.Seconds / 1e9:F2} GB/s");

    /// <summary>Time left at the rate so far; "-" before anything moved.</summary>
    public static string Eta(ProgressLine p)
    {
        if (p.BytesTotal == 0)
        {
            return "";
        }
        if (p.BytesDone >= p.BytesTotal)
        {
            return "0 s";
        }
        return p.BytesDone <= 0 || p.Seconds <= 0
            ? "-"
            : string.Create(CultureInfo.InvariantCulture, $"{(p.BytesTotal - p.BytesDone) * p.Seconds / p.BytesDone:F0} s");
    }

    /// <summary>Splits <c>[rank R] TEXT</c>.</summary>
    internal static bool TrySplit(string line, out int rank, out string text)
    {
        const string prefix = "[rank ";
        rank = -1;
        text = line;
        var close = line.IndexOf("] ", StringComparison.Ordinal);
        if (!line.StartsWith(prefix, StringComparison.Ordinal) || close <= prefix.Length
            || !int.TryParse(line.AsSpan(prefix.Length, close - prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out rank))
        {
            return false;
        }
        text = line[(close + 2)..];
        return true;
    }
}
