using System.Text.Json;
using CheckpointEngine.Cli.Bench;

namespace CheckpointEngine.Tests.Bench;

/// <summary>The soak's arithmetic and report, from synthetic samples: the slope, the fitted rounds, the rows and the limit.</summary>
public sealed class SoakReportTests
{
    private static readonly MachineInfo Machine = new(2, 8L << 30, "Test CPU", "Test OS", "Linux 6.1", ".NET 10.0.0");

    /// <summary>Round k's sample: <paramref name="start"/> + <paramref name="perRound"/> × (k − 1) KiB, all of it anonymous.</summary>
    private static SoakProcess Growing(string name, int rounds, long start, long perRound) =>
        new(name, 100, [.. Enumerable.Range(0, rounds).Select(i => new ResidentMemory(start + perRound * i, start + perRound * i - 10_000, 8_000, 2_000))]);

    [Fact]
    public void LeastSquaresSlope_OfALine_IsItsSlope_AndNoiseAroundAFlatLineAveragesOut()
    {
        Assert.Equal(3.0, SoakProcess.LeastSquaresSlope([10, 13, 16, 19, 22]), 12);
        Assert.Equal(0.0, SoakProcess.LeastSquaresSlope([5, 7, 6, 9, 6, 7, 5]), 12); // Symmetric: it rises as much as it falls.
        Assert.Equal(-2.0, SoakProcess.LeastSquaresSlope([4, 2]), 12);
        Assert.True(double.IsNaN(SoakProcess.LeastSquaresSlope([42])));
        Assert.True(double.IsNaN(SoakProcess.LeastSquaresSlope([])));
    }

    [Fact]
    public void Slope_OverTheFittedRounds_LeavesTheWarmUpOut()
    {
        // Steep in the first ten rounds (warm-up), then 40 KiB a round.
        var samples = Enumerable.Range(1, 150).Select(k => k <= 10 ? 1_000L * k : 100_000 + 40L * k).ToList();
        var p = new SoakProcess("serve rank 0", 1, [.. samples.Select(s => new ResidentMemory(s, s, 0, 0))]);
        var (first, last) = new SoakSettings().FitRange;
        Assert.Equal((11, 150), (first, last));
        Assert.Equal(40, p.Slope(first, last), 9);
        Assert.True(p.Slope(1, 150) > 100, "the warm-up counts when it is fitted");
        Assert.Equal(0, p.Slope(first, last, s => s.File), 9);
    }

    [Theory]
    [InlineData(150, 11, 11, 150)]
    [InlineData(12, 11, 11, 12)]
    [InlineData(11, 11, 1, 11)] // One fitted round is no line: fit them all.
    [InlineData(3, 11, 1, 3)]
    [InlineData(3, 1, 1, 3)]
    public void FitRange_FromFitFrom_OrEveryRoundWhenTooFewAreLeft(int rounds, int fitFrom, int first, int last) =>
        Assert.Equal((first, last), new SoakSettings(Rounds: rounds, FitFrom: fitFrom).FitRange);

    [Fact]
    public void Report_ARowPerProcess_InTheTableAndTheJson_AndTheLimitNamesWhoGrew()
    {
        var settings = new SoakSettings(Rounds: 150, MaxSlope: 50);
        var report = new SoakReport(Machine, new DateTimeOffset(2026, 1, 2, 3, 4, 0, TimeSpan.Zero), settings,
            [Growing("serve rank 0", 150, 80_000, 120), Growing("serve rank 1", 150, 78_000, 0), Growing("worker", 150, 66_000, 30)], 12.5);

        Assert.Equal(["serve rank 0"], report.OverLimit.Select(p => p.Name));
        var text = new StringWriter();
        report.WriteText(text);
        var lines = text.ToString().Split('\n');
        Assert.Equal("./ckpt-engine soak --ranks 2 --rounds 150 --fit-from 11 --max-slope 50", lines[0]);
        Assert.Contains(lines, l => l.StartsWith("serve rank 0", StringComparison.Ordinal) && l.Contains(" 120.0 ", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("serve rank 1", StringComparison.Ordinal) && l.Contains(" 0.0 ", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("worker", StringComparison.Ordinal) && l.Contains(" 30.0 ", StringComparison.Ordinal));
        Assert.Contains("over 50 KiB/round: serve rank 0", text.ToString(), StringComparison.Ordinal);

        using var doc = JsonDocument.Parse(report.ToJson());
        Assert.Equal(11, doc.RootElement.GetProperty("settings").GetProperty("fit_first_round").GetInt32());
        Assert.Equal(150, doc.RootElement.GetProperty("settings").GetProperty("fit_last_round").GetInt32());
        Assert.Equal(4, doc.RootElement.GetProperty("settings").GetProperty("layers").GetInt32()); // Two per rank by default.
        var rows = doc.RootElement.GetProperty("processes").EnumerateArray().ToList();
        Assert.Equal(["serve rank 0", "serve rank 1", "worker"], rows.Select(r => r.GetProperty("name").GetString()));
        Assert.Equal([120.0, 0.0, 30.0], rows.Select(r => r.GetProperty("slope_kib_per_round").GetDouble()));
        Assert.Equal([120.0, 0.0, 30.0], rows.Select(r => r.GetProperty("anon_slope_kib_per_round").GetDouble()));
        Assert.All(rows, r => Assert.Equal(0.0, r.GetProperty("file_slope_kib_per_round").GetDouble()));
        Assert.Equal(80_000 + 120 * 149, rows[0].GetProperty("rss_end_kib").GetInt64());
        Assert.Equal(80_000, rows[0].GetProperty("rss_start_kib").GetInt64());
        Assert.All(rows, r => Assert.Equal(150, r.GetProperty("rss_kib").GetArrayLength()));
    }

    [Fact]
    public async Task LaunchLines_ReadyOnceEveryRankPrintedItsLine_AndKeepsOnlyTheLastLines()
    {
        var lines = new LaunchLines("serving rank ", 2);
        lines.WriteLine("[rank 1] starting");
        lines.WriteLine("[rank 1] serving rank 1 on http://127.0.0.1:2");
        Assert.False(lines.ReadyAsync.IsCompleted);
        lines.WriteLine("[rank 0] serving rank 0 on http://127.0.0.1:1");
        lines.WriteLine("[rank 0] serving rank 0 on http://127.0.0.1:9"); // Only the first counts.
        Assert.Equal(["0 on http://127.0.0.1:1", "1 on http://127.0.0.1:2"], await lines.ReadyAsync.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
        for (var i = 0; i < 1000; i++)
        {
            lines.WriteLine($"[rank 0] registered 'step{i}'");
        }
        var tail = lines.Tail.Split("\n  ");
        Assert.Equal(40, tail.Length);
        Assert.Equal("[rank 0] registered 'step999'", tail[^1]);
    }
}
