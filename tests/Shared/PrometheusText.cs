using System.Globalization;
using System.Text.RegularExpressions;

namespace CheckpointEngine.Tests.Support;

/// <summary>Reads samples out of a Prometheus text exposition (as <c>GET /metrics</c> serves it) by name and labels.</summary>
public static partial class PrometheusText
{
    /// <summary>Every sample: metric name, labels, value (a trailing timestamp, if any, is ignored).</summary>
    public static List<(string Name, Dictionary<string, string> Labels, double Value)> Samples(string text)
    {
        var samples = new List<(string, Dictionary<string, string>, double)>();
        foreach (var line in text.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0 && !l.StartsWith('#')))
        {
            var m = SampleLine().Match(line);
            Assert.True(m.Success, $"not a Prometheus sample line: {line}");
            var labels = LabelPair().Matches(m.Groups["labels"].Value).ToDictionary(p => p.Groups[1].Value, p => p.Groups[2].Value, StringComparer.Ordinal);
            var value = m.Groups["value"].Value switch
            {
                "+Inf" => double.PositiveInfinity,
                "-Inf" => double.NegativeInfinity,
                "NaN" => double.NaN,
                var v => double.Parse(v, NumberStyles.Float, CultureInfo.InvariantCulture),
            };
            samples.Add((m.Groups["name"].Value, labels, value));
        }
        return samples;
    }

    /// <summary>The value of the one sample of <paramref name="name"/> whose labels include <paramref name="labels"/>; fails naming what is there otherwise.</summary>
    public static double Value(string text, string name, params (string Label, string Value)[] labels)
    {
        var matching = Samples(text).Where(s => s.Name == name && labels.All(l => s.Labels.GetValueOrDefault(l.Label) == l.Value)).ToList();
        Assert.True(matching.Count == 1, $"{matching.Count} samples of {name} with {string.Join(",", labels.Select(l => $"{l.Label}={l.Value}"))} in:\n{text}");
        return matching[0].Value;
    }

    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>.*)\})?\s+(?<value>\S+)(\s+-?\d+)?$")]
    private static partial Regex SampleLine();

    [GeneratedRegex(@"([a-zA-Z_][a-zA-Z0-9_]*)=""((?:[^""\\]|\\.)*)""")]
    private static partial Regex LabelPair();
}
