using System.Globalization;
using System.Security;
using System.Text;

namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// Draws a <see cref="Timeline"/> as an SVG Gantt chart: a row per rank × stage, a bar per bucket
/// (its index written on it when it fits, details on hover), a time axis in ms, a legend, a color per
/// stage, so whether the stages overlap shows at a glance.
/// </summary>
internal static class GanttSvg
{
    private const double Width = 1200, LabelWidth = 180, RightMargin = 24, RowHeight = 20, RowGap = 4, RankGap = 12, Top = 96;
    private const double Plot = Width - LabelWidth - RightMargin;

    /// <summary>Stages keep their colors from chart to chart; other tracks take the rest in turn.</summary>
    private static readonly Dictionary<string, string> StageColors = new(StringComparer.Ordinal)
    {
        ["h2d"] = "#4e79a7", ["p2p read"] = "#76b7b2", ["broadcast"] = "#f28e2b", ["reload"] = "#59a14f",
    };

    private static readonly int[] NiceSteps = [1, 2, 5, 10];

    private static readonly string[] OtherColors = ["#e15759", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"];

    public static string Render(Timeline timeline)
    {
        var svg = new StringBuilder();
        if (timeline.IsEmpty)
        {
            Open(svg, 640, 110);
            Text(svg, 16, 28, "title", timeline.Title);
            Text(svg, 16, 70, "empty", "empty trace: no stage spans to draw");
            svg.AppendLine("</svg>");
            return svg.ToString();
        }
        var colors = Colors(timeline.Rows);
        var ys = new List<double>();
        var y = Top + 8;
        for (var i = 0; i < timeline.Rows.Count; i++)
        {
            if (i > 0 && timeline.Rows[i].Pid != timeline.Rows[i - 1].Pid)
            {
                y += RankGap;
            }
            ys.Add(y);
            y += RowHeight + RowGap;
        }
        var bottom = y + 4;
        var height = bottom + 44;
        var t0 = timeline.StartUs;
        var span = Math.Max(timeline.EndUs - t0, 1);
        double X(double us) => LabelWidth + (us - t0) / span * Plot;

        Open(svg, Width, height);
        Text(svg, 16, 26, "title", timeline.Title);
        if (timeline.Subtitle is { } sub)
        {
            Text(svg, 16, 46, "sub", sub);
        }
        var lx = 16.0;
        foreach (var (name, color) in colors)
        {
            svg.AppendLine(F($"<rect x=\"{lx:F1}\" y=\"60\" width=\"12\" height=\"12\" fill=\"{color}\"/>"));
            Text(svg, lx + 17, 70.5, "legend", name);
            lx += 17 + 7.5 * name.Length + 22;
        }

        for (var i = 0; i < timeline.Rows.Count; i++)
        {
            var row = timeline.Rows[i];
            var ry = ys[i];
            if (i > 0 && row.Pid != timeline.Rows[i - 1].Pid)
            {
                svg.AppendLine(F($"<line class=\"sep\" x1=\"16\" y1=\"{ry - RankGap / 2 - RowGap / 2:F1}\" x2=\"{Width - RightMargin:F1}\" y2=\"{ry - RankGap / 2 - RowGap / 2:F1}\"/>"));
            }
            svg.AppendLine(F($"<rect class=\"lane\" x=\"{LabelWidth:F1}\" y=\"{ry:F1}\" width=\"{Plot:F1}\" height=\"{RowHeight:F1}\"/>"));
            Text(svg, LabelWidth - 8, ry + 14, "row end", $"{row.Process} · {row.Track}");
        }

        // Time axis: ticks at 1/2/5 × 10^n ms, labels on top and bottom, grid lines through the rows.
        var (step, decimals) = TickStep(span / 1000);
        Text(svg, LabelWidth - 8, Top - 4, "axis end", "ms since start");
        for (var ms = Math.Ceiling(t0 / 1000 / step) * step; ms * 1000 <= t0 + span + 1e-6; ms += step)
        {
            var x = X(ms * 1000);
            var label = ms.ToString("F" + decimals, CultureInfo.InvariantCulture);
            svg.AppendLine(F($"<line class=\"grid\" x1=\"{x:F1}\" y1=\"{Top:F1}\" x2=\"{x:F1}\" y2=\"{bottom:F1}\"/>"));
            Text(svg, x, Top - 4, "axis mid", label);
            Text(svg, x, bottom + 14, "axis mid", label);
        }
        svg.AppendLine(F($"<line class=\"axisline\" x1=\"{LabelWidth:F1}\" y1=\"{Top:F1}\" x2=\"{LabelWidth + Plot:F1}\" y2=\"{Top:F1}\"/>"));
        svg.AppendLine(F($"<line class=\"axisline\" x1=\"{LabelWidth:F1}\" y1=\"{bottom:F1}\" x2=\"{LabelWidth + Plot:F1}\" y2=\"{bottom:F1}\"/>"));

        for (var i = 0; i < timeline.Rows.Count; i++)
        {
            var row = timeline.Rows[i];
            var ry = ys[i];
            foreach (var b in row.Bars)
            {
                var x = X(b.StartUs);
                var w = Math.Max(b.DurationUs / span * Plot, 0.5);
                var what = $"{row.Process} · {row.Track}{(b.Bucket is { } k ? $" · bucket {k}" : "")}{(b.Owner is { } o ? $" (owner {o})" : "")}{(b.Bytes is { } n ? $": {ByteSize.Format(n)}" : "")}";
                var tip = F($"{what}, {(b.StartUs - t0) / 1000:F3} → {(b.StartUs + b.DurationUs - t0) / 1000:F3} ms ({b.DurationUs / 1000:F3} ms)");
                svg.Append(F($"<rect class=\"bar\" x=\"{x:F2}\" y=\"{ry + 2:F1}\" width=\"{w:F2}\" height=\"{RowHeight - 4:F1}\" fill=\"{colors[row.Track]}\">"));
                svg.Append("<title>").Append(SecurityElement.Escape(tip)).AppendLine("</title></rect>");
                if (b.Bucket is { } bucket && bucket >= 0)
                {
                    var text = bucket.ToString(CultureInfo.InvariantCulture);
                    if (w >= 6.5 * text.Length + 4)
                    {
                        Text(svg, x + w / 2, ry + 14, "num mid", text);
                    }
                }
            }
        }
        svg.AppendLine("</svg>");
        return svg.ToString();
    }

    private static Dictionary<string, string> Colors(IEnumerable<Timeline.Row> rows)
    {
        var colors = new Dictionary<string, string>(StringComparer.Ordinal);
        var next = 0;
        foreach (var track in rows.Select(r => r.Track).Distinct())
        {
            colors[track] = StageColors.TryGetValue(track, out var c) ? c : OtherColors[next++ % OtherColors.Length];
        }
        return colors;
    }

    /// <summary>About ten ticks over <paramref name="spanMs"/>, and the decimals their labels need.</summary>
    internal static (double Step, int Decimals) TickStep(double spanMs)
    {
        var raw = Math.Max(spanMs, 1e-6) / 10;
        var magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        var step = NiceSteps.Select(m => m * magnitude).First(s => s >= raw);
        return (step, Math.Max(0, (int)Math.Ceiling(-Math.Log10(step) - 1e-9)));
    }

    private static void Open(StringBuilder svg, double width, double height)
    {
        svg.AppendLine("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        svg.AppendLine(F($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:F0}\" height=\"{height:F0}\" viewBox=\"0 0 {width:F0} {height:F0}\">"));
        svg.AppendLine("""
            <style>
              text { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; fill: #222; }
              .title { font-size: 15px; font-weight: bold; }
              .sub, .empty { font-size: 12px; fill: #555; }
              .legend, .row { font-size: 12px; }
              .axis { font-size: 10px; fill: #555; }
              .num { font-size: 10px; fill: #fff; }
              .mid { text-anchor: middle; }
              .end { text-anchor: end; }
              .grid { stroke: #e4e4e4; stroke-width: 1; }
              .axisline { stroke: #999; stroke-width: 1; }
              .sep { stroke: #ccc; stroke-width: 1; stroke-dasharray: 3 3; }
              .lane { fill: #f7f7f7; }
              .bar { stroke: #fff; stroke-width: 0.5; }
            </style>
            """);
        svg.AppendLine(F($"<rect width=\"{width:F0}\" height=\"{height:F0}\" fill=\"#fff\"/>"));
    }

    private static void Text(StringBuilder svg, double x, double y, string cls, string text) =>
        svg.AppendLine(F($"<text class=\"{cls}\" x=\"{x:F1}\" y=\"{y:F1}\">{SecurityElement.Escape(text)}</text>"));

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
