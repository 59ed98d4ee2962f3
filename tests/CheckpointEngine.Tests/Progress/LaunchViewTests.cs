using CheckpointEngine.Cli.Progress;

namespace CheckpointEngine.Tests.Progress;

/// <summary>The launcher's progress view in logs: rank lines pass through, progress lines become one board line per tick, results a summary table.</summary>
public sealed class LaunchViewTests
{
    [Fact]
    public void ProgressLine_RoundTrips_AndOtherLinesAreNotProgress()
    {
        var line = new ProgressLine("gather metas", 3, 8, 3 << 20, 8 << 20, 1.5);
        Assert.True(ProgressLine.TryParse(line.Format(), out var parsed));
        Assert.Equal(line, parsed);
        Assert.False(ProgressLine.TryParse("result method=p2p bytes=1 seconds=1", out _));
        Assert.False(ProgressLine.TryParse("progress bucket=1/2", out _)); // No stage.
        var half = RankBoard.Describe(new ProgressLine("p2p", 2, 6, 1_000_000_000, 3_000_000_000, 0.5));
        Assert.StartsWith("p2p 2/6 ", half, StringComparison.Ordinal);
        Assert.EndsWith(" 2.00 GB/s ETA 1 s", half, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Logs_OneBoardLinePerTickThatMoved_RankLinesPassThrough_SummaryAtTheEnd()
    {
        var time = new StillTime();
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var capture = new StringWriter();
        await using (var view = new LaunchView(2, stdout, stderr, interactive: false, verbose: false, capture, time))
        {
            view.Out.WriteLine("[rank 0] join (host device d0): 0.010 s");
            for (var k = 0; k <= 100; k++)
            {
                view.Out.WriteLine($"[rank 0] {new ProgressLine("broadcast", k / 10, 10, k << 20, 100L << 20, 0.01 * (k + 1)).Format()}");
            }
            view.Out.WriteLine($"[rank 1] {new ProgressLine("register").Format()}");
            view.Tick();
            view.Tick(); // Nothing moved since: no line.
            view.Out.WriteLine($"[rank 1] {new ProgressLine("done").Format()}");
            view.Err.WriteLine("[rank 1] warning: something");
            view.Out.WriteLine("[rank 0] result method=broadcast bytes=104857600 seconds=1.010000 buckets=10 stage=0.1 broadcast=0.2 reload=0.3 efficiency=1.5 update=0");
            view.Out.WriteLine("[rank 1] result method=broadcast bytes=104857600 seconds=1.020000 buckets=10 stage=0.1 broadcast=0.2 reload=0.3 efficiency=1.5 update=0");
        }
        var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToList();
        // Two board lines in all: the tick's and the last state's at the end; no rank's progress line gets through.
        Assert.Equal(
            ["progress: rank 0 broadcast 10/10 100.0 MiB/100.0 MiB 0.10 GB/s ETA 0 s | rank 1 register", "progress: rank 0 broadcast 10/10 100.0 MiB/100.0 MiB 0.10 GB/s ETA 0 s | rank 1 done"],
            lines.Where(l => l.StartsWith("progress", StringComparison.Ordinal)));
        Assert.DoesNotContain(lines, l => l.Contains("] progress ", StringComparison.Ordinal));
        Assert.Contains("[rank 0] join (host device d0): 0.010 s", lines);
        Assert.Contains("[rank 0] result method=broadcast bytes=104857600 seconds=1.010000 buckets=10 stage=0.1 broadcast=0.2 reload=0.3 efficiency=1.5 update=0", lines);
        Assert.Equal("[rank 1] warning: something", stderr.ToString().Trim());
        // The summary: a header and one row per rank's result.
        var header = Assert.Single(lines, l => l.Contains("method", StringComparison.Ordinal) && l.Contains("GB/s", StringComparison.Ordinal));
        Assert.All(new[] { "rank", "bytes", "h2d s", "bcast s", "reload s", "eff" }, c => Assert.Contains(c, header, StringComparison.Ordinal));
        Assert.Matches(@"\| broadcast \|\s+0 \|\s+0 \| 100\.0 MiB \|\s+1\.010 \|\s+0\.10 \|\s+0\.100 \|\s+0\.200 \|\s+0\.300 \|\s+1\.50 \|", stdout.ToString());
        Assert.Matches(@"\| broadcast \|\s+0 \|\s+1 \| 100\.0 MiB \|\s+1\.020 \|", stdout.ToString());
        // A caller that parses the ranks' output sees every line, progress included.
        Assert.Equal(106, capture.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
    }

    /// <summary>Time that stands still: the view's timer never fires, the test ticks the view itself.</summary>
    private sealed class StillTime : TimeProvider
    {
        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) => new Timer();

        private sealed class Timer : ITimer
        {
            public bool Change(TimeSpan dueTime, TimeSpan period) => true;

            public void Dispose()
            {
            }

            public ValueTask DisposeAsync() => ValueTask.CompletedTask;
        }
    }
}
