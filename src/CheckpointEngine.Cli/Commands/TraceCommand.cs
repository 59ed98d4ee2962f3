using System.CommandLine;
using CheckpointEngine.Hosting.Tracing;

namespace CheckpointEngine.Cli.Commands;

/// <summary><c>ckpt-engine trace render FILE.json [--out FILE.svg]</c>: draws an update trace (from <c>update --trace</c>) as an SVG Gantt chart.</summary>
internal static class TraceCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var file = new Argument<string>("file") { Description = "a trace-event JSON file written by update --trace or demo --trace" };
        var output = new Option<string?>("--out") { Description = "the SVG to write (default: FILE with .svg for .json)" };
        var render = new Command("render", "Draw an update trace as an SVG Gantt chart: a row per rank and stage, a bar per bucket.") { file, output };
        render.SetAction(result =>
        {
            var input = result.GetValue(file)!;
            Timeline timeline;
            try
            {
                timeline = ChromeTraceReader.Read(input);
            }
            catch (TraceFormatException e)
            {
                stderr.WriteLine($"error: {e.Message}");
                return CkptEngineCli.BadInput;
            }
            var svg = result.GetValue(output) ?? (Path.ChangeExtension(input, ".svg") is var s && s != input ? s : input + ".svg");
            File.WriteAllText(svg, GanttSvg.Render(timeline));
            stdout.WriteLine(timeline.IsEmpty
                ? $"wrote {svg} (the trace has no stage spans)"
                : $"wrote {svg}: {timeline.Rows.Count} rows, {timeline.Rows.Sum(r => r.Bars.Count)} bars over {(timeline.EndUs - timeline.StartUs) / 1000:F1} ms");
            return 0;
        });
        return new Command("trace", "Work with update traces (update --trace, demo --trace).") { render };
    }
}
