using System.Xml.Linq;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.Hosting.Tracing;

namespace CheckpointEngine.Tests.Tracing;

public sealed class GanttSvgTests : IDisposable
{
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-trace-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private string File(string name, string text)
    {
        var path = Path.Combine(_dir, name);
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Render_TwoRanks_ValidSvgWithARowPerRankAndStageAndABarPerStageSpan()
    {
        var json = Path.Combine(_dir, "t.json");
        ChromeTraceWriter.WriteFile(TraceSamples.TwoRanks(), json);
        var (code, stdout, stderr) = Run("trace", "render", json, "--out", Path.Combine(_dir, "t.svg"));
        Assert.True(code == 0, stderr);
        Assert.Contains("6 rows, 10 bars", stdout);

        var svg = XDocument.Load(Path.Combine(_dir, "t.svg"));
        Assert.Equal(Svg + "svg", svg.Root!.Name);
        var bars = svg.Descendants(Svg + "rect").Where(r => (string?)r.Attribute("class") == "bar").ToList();
        Assert.Equal(TraceSamples.TwoRanks().Spans().Count(s => s.Track.IsStage()), bars.Count);
        Assert.Equal(10, bars.Count);
        Assert.All(bars, b => Assert.StartsWith("rank ", b.Element(Svg + "title")!.Value));
        var texts = svg.Descendants(Svg + "text").Select(t => t.Value).ToList();
        Assert.Contains("rank 0 · h2d", texts);
        Assert.Contains("rank 1 · reload", texts);
        Assert.Contains("broadcast", texts); // legend
        Assert.Contains("update of 'ckpt' · broadcast · 2 ranks", texts);
        Assert.Contains(texts, t => t.StartsWith("pipeline efficiency 2.11", StringComparison.Ordinal));
        Assert.Contains("ms since start", texts);
        // Three colors, one per stage, and wide bars carry their bucket index.
        Assert.Equal(3, bars.Select(b => (string?)b.Attribute("fill")).Distinct().Count());
        Assert.Contains(svg.Descendants(Svg + "text"), t => (string?)t.Attribute("class") == "num mid" && t.Value == "1");
    }

    [Fact]
    public void Render_NoOut_WritesNextToTheJson()
    {
        var json = Path.Combine(_dir, "next.json");
        ChromeTraceWriter.WriteFile(TraceSamples.TwoRanks("p2p"), json);
        Assert.Equal(0, Run("trace", "render", json).Code);
        var svg = XDocument.Load(Path.Combine(_dir, "next.svg"));
        Assert.Contains(svg.Descendants(Svg + "text"), t => t.Value == "rank 1 · p2p read");
    }

    [Theory]
    [InlineData("""{"traceEvents":[]}""")]
    [InlineData("""{"traceEvents":[{"name":"update (broadcast)","cat":"update","ph":"X","ts":0,"dur":5,"pid":0,"tid":0}]}""")]
    [InlineData("""[]""")]
    public void Render_EmptyTrace_SaysSoInAValidSvg(string json)
    {
        var path = File("empty.json", json);
        var (code, stdout, stderr) = Run("trace", "render", path, "--out", Path.Combine(_dir, "empty.svg"));
        Assert.True(code == 0, stderr);
        Assert.Contains("no stage spans", stdout);
        var svg = XDocument.Load(Path.Combine(_dir, "empty.svg"));
        Assert.Contains(svg.Descendants(Svg + "text"), t => t.Value.StartsWith("empty trace", StringComparison.Ordinal));
        Assert.DoesNotContain(svg.Descendants(Svg + "rect"), r => (string?)r.Attribute("class") == "bar");
    }

    [Fact]
    public void Render_MissingFile_OneLineNamingIt()
    {
        var path = Path.Combine(_dir, "nope.json");
        var (code, _, stderr) = Run("trace", "render", path, "--out", Path.Combine(_dir, "x.svg"));
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Equal($"error: trace file {path} does not exist", stderr.TrimEnd());
        Assert.False(System.IO.File.Exists(Path.Combine(_dir, "x.svg")));
    }

    [Theory]
    [InlineData("""{"traceEvents":[""", "is not JSON (line 1")]
    [InlineData("""{"events":[]}""", "no \"traceEvents\" array")]
    [InlineData("""{"traceEvents":[{"ph":"X","pid":0,"tid":1,"dur":3}]}""", "event 0 has no numeric \"ts\"")]
    [InlineData("""{"traceEvents":[{"ph":"M","pid":0,"name":"process_name","args":{"name":"r"}}, 7]}""", "event 1 is not an object")]
    [InlineData("""{"traceEvents":[{"ph":"X","pid":0,"tid":1,"ts":0,"dur":-2}]}""", "a duration of at least 0")]
    public void Render_MalformedFile_OneLineNamingFileAndProblem(string json, string problem)
    {
        var path = File("bad.json", json);
        var (code, stdout, stderr) = Run("trace", "render", path, "--out", Path.Combine(_dir, "bad.svg"));
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Empty(stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"error: {path}", line);
        Assert.Contains(problem, line);
    }

    [Theory]
    [InlineData(9.5, 1, 0)]
    [InlineData(163.5, 20, 0)]
    [InlineData(0.4, 0.05, 2)]
    [InlineData(2000, 200, 0)]
    public void TickStep_AboutTenNiceTicks(double spanMs, double step, int decimals)
    {
        var (s, d) = GanttSvg.TickStep(spanMs);
        Assert.Equal(step, s, 9);
        Assert.Equal(decimals, d);
    }
}
