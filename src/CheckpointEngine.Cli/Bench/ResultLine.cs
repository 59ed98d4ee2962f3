using System.Globalization;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// The machine line <c>update</c> prints after each update (<c>result method=M bytes=N seconds=S
/// buckets=B stage=… broadcast=… reload=…</c>), read by key so that fields added later are ignored.
/// </summary>
/// <param name="Update">Which update of its process (<c>bench rank</c> adds <c>update=K</c>); 0 when absent.</param>
/// <param name="Efficiency">Pipeline efficiency (wall ÷ busiest stage); 0 when absent.</param>
internal sealed record ResultLine(int Rank, string Method, long Bytes, double Seconds, int Buckets, double Stage, double Broadcast, double Reload, int Update = 0, double Efficiency = 0)
{
    /// <summary>How a P2P update read (<c>transport=tcp|ucx</c>); null when absent.</summary>
    public string? Transport { get; init; }

    /// <summary>The line of a prepare (<c>prepare=1</c>, see <see cref="Server.ParameterServer.PrepareAsync"/>), not of an update.</summary>
    public bool Prepare { get; init; }

    /// <summary>Bytes the rank received from other hosts (<c>network=N</c>); 0 when absent.</summary>
    public long Network { get; init; }

    private const string Marker = "result method=";

    /// <summary>Parses a line as the launcher forwards it (<c>[rank R] result ...</c>) or bare (rank -1); false for any other line.</summary>
    public static bool TryParse(string line, out ResultLine result)
    {
        result = null!;
        var at = line.IndexOf(Marker, StringComparison.Ordinal);
        if (at < 0)
        {
            return false;
        }
        var fields = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var field in line[(at + "result ".Length)..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = field.IndexOf('=', StringComparison.Ordinal);
            if (eq > 0)
            {
                fields[field[..eq]] = field[(eq + 1)..].TrimEnd('\r');
            }
        }
        var rank = -1;
        if (line.StartsWith("[rank ", StringComparison.Ordinal) && line.IndexOf(']', StringComparison.Ordinal) is var close and > 6)
        {
            _ = int.TryParse(line.AsSpan(6, close - 6), NumberStyles.None, CultureInfo.InvariantCulture, out rank);
        }
        double D(string key) => fields.TryGetValue(key, out var v) && double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : double.NaN;
        if (!fields.TryGetValue("method", out var method)
            || !fields.TryGetValue("bytes", out var b) || !long.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out var bytes)
            || double.IsNaN(D("seconds")))
        {
            return false;
        }
        int I(string key) => fields.TryGetValue(key, out var v) && int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
        result = new ResultLine(rank, method, bytes, D("seconds"), I("buckets"), D("stage"), D("broadcast"), D("reload"), I("update"),
            double.IsNaN(D("efficiency")) ? 0 : D("efficiency")) { Transport = fields.GetValueOrDefault("transport"), Prepare = fields.GetValueOrDefault("prepare") == "1",
            Network = fields.TryGetValue("network", out var net) && long.TryParse(net, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0 };
        return true;
    }

    /// <summary>Every result line in <paramref name="output"/>, in order.</summary>
    public static List<ResultLine> ParseAll(string output)
    {
        var lines = new List<ResultLine>();
        foreach (var line in output.Split('\n'))
        {
            if (TryParse(line, out var r))
            {
                lines.Add(r);
            }
        }
        return lines;
    }
}
