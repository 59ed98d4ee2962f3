using System.Text.Json;
using CheckpointEngine.Hosting.Tracing;
using CheckpointEngine.Server;
using static CheckpointEngine.Tests.Tracing.TraceSamples;

namespace CheckpointEngine.Tests.Tracing;

public sealed class ChromeTraceWriterTests
{
    private static JsonElement Write(UpdateTrace trace)
    {
        using var buffer = new MemoryStream();
        ChromeTraceWriter.Write(trace, buffer);
        using var doc = JsonDocument.Parse(buffer.ToArray());
        return doc.RootElement.Clone();
    }

    private static List<JsonElement> Events(JsonElement root, string ph) =>
        root.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() == ph).ToList();

    private static JsonElement Span(JsonElement root, int pid, TraceTrack track, int bucket) =>
        Assert.Single(Events(root, "X"), e => e.GetProperty("pid").GetInt32() == pid && e.GetProperty("tid").GetInt32() == (int)track
            && e.GetProperty("args").TryGetProperty("bucket", out var b) && b.GetInt32() == bucket);

    [Fact]
    public void Write_TwoRanks_TopLevelAndMetadataNameEveryRankAndTrack()
    {
        var root = Write(TwoRanks());
        Assert.Equal("ms", root.GetProperty("displayTimeUnit").GetString());
        var meta = Events(root, "M");
        string Name(string kind, int pid, int tid) => Assert.Single(meta, e => e.GetProperty("name").GetString() == kind
            && e.GetProperty("pid").GetInt32() == pid && e.GetProperty("tid").GetInt32() == tid).GetProperty("args").GetProperty("name").GetString()!;
        Assert.Equal("rank 0", Name("process_name", 0, 0));
        Assert.Equal("rank 1", Name("process_name", 1, 0));
        foreach (var pid in new[] { 0, 1 })
        {
            Assert.Equal("h2d", Name("thread_name", pid, 1));
            Assert.Equal("broadcast", Name("thread_name", pid, 2));
            Assert.Equal("reload", Name("thread_name", pid, 3));
            Assert.Equal("update", Name("thread_name", pid, 0));
        }
        Assert.Contains(meta, e => e.GetProperty("name").GetString() == "thread_sort_index" && e.GetProperty("args").GetProperty("sort_index").GetInt32() == 3);
        Assert.All(Events(root, "X"), e =>
        {
            foreach (var key in new[] { "name", "cat", "ts", "dur", "pid", "tid", "args" })
            {
                Assert.True(e.TryGetProperty(key, out _), $"{e} has no {key}");
            }
        });
        Assert.Equal("2.111", root.GetProperty("otherData").GetProperty("efficiency").GetString());
    }

    [Fact]
    public void Write_TwoRanks_SpansInMicrosecondsShiftedByEachRanksStart()
    {
        var root = Write(TwoRanks());
        var h2d = Span(root, 0, TraceTrack.Stage, 0);
        Assert.Equal(1000, h2d.GetProperty("ts").GetDouble());
        Assert.Equal(2000.5, h2d.GetProperty("dur").GetDouble());
        Assert.Equal("stage", h2d.GetProperty("cat").GetString());
        Assert.Equal("bucket 0", h2d.GetProperty("name").GetString());
        Assert.Equal(100, h2d.GetProperty("args").GetProperty("bytes").GetInt64());
        Assert.Equal(0, h2d.GetProperty("args").GetProperty("owner").GetInt32());

        // Rank 1 started 1 ms later: its offsets move by 1000 µs.
        var broadcast = Span(root, 1, TraceTrack.Broadcast, 0);
        Assert.Equal(4000, broadcast.GetProperty("ts").GetDouble());
        Assert.Equal(2000, broadcast.GetProperty("dur").GetDouble());
        var staged = Span(root, 1, TraceTrack.Stage, 1);
        Assert.Equal((1500.0, 4000.0), (staged.GetProperty("ts").GetDouble(), staged.GetProperty("dur").GetDouble()));
        Assert.Equal(1, staged.GetProperty("args").GetProperty("owner").GetInt32());
        Assert.Equal(200, staged.GetProperty("args").GetProperty("bytes").GetInt64());
        var reload = Span(root, 1, TraceTrack.Reload, 1);
        Assert.Equal((9500.0, 1000.0), (reload.GetProperty("ts").GetDouble(), reload.GetProperty("dur").GetDouble()));

        var update = Assert.Single(Events(root, "X"), e => e.GetProperty("pid").GetInt32() == 1 && e.GetProperty("tid").GetInt32() == 0);
        Assert.Equal((1000.0, 11000.0), (update.GetProperty("ts").GetDouble(), update.GetProperty("dur").GetDouble()));
        Assert.Equal("update", update.GetProperty("cat").GetString());
    }

    [Fact]
    public void Write_TwoRanks_StagesOnlyOnStagersAndWaitsBetweenStages()
    {
        var root = Write(TwoRanks());
        var x = Events(root, "X");
        int Count(int pid, TraceTrack t) => x.Count(e => e.GetProperty("pid").GetInt32() == pid && e.GetProperty("tid").GetInt32() == (int)t);
        Assert.Equal([1, 2, 2], TraceTracks.Stages.Select(t => Count(0, t)));
        Assert.Equal([1, 2, 2], TraceTracks.Stages.Select(t => Count(1, t)));

        var waitForBroadcast = Span(root, 0, TraceTrack.WaitForBroadcast, 0); // staged until 3.0005 ms, broadcast from 4 ms
        Assert.Equal((3000.5, 999.5), (waitForBroadcast.GetProperty("ts").GetDouble(), waitForBroadcast.GetProperty("dur").GetDouble()));
        Assert.Equal("wait", waitForBroadcast.GetProperty("cat").GetString());
        var waitForReload = Span(root, 1, TraceTrack.WaitForReload, 1); // broadcast until 7 (+1) ms, reload from 8.5 (+1) ms
        Assert.Equal((8000.0, 1500.0), (waitForReload.GetProperty("ts").GetDouble(), waitForReload.GetProperty("dur").GetDouble()));
        Assert.Equal(1, Count(1, TraceTrack.WaitForBroadcast)); // rank 1 staged only bucket 1
    }

    [Fact]
    public void Write_P2P_NamesTheStageTrackP2PRead()
    {
        var meta = Events(Write(TwoRanks("p2p")), "M");
        Assert.Contains(meta, e => e.GetProperty("name").GetString() == "thread_name" && e.GetProperty("args").GetProperty("name").GetString() == "p2p read");
        Assert.DoesNotContain(meta, e => e.GetProperty("args").TryGetProperty("name", out var n) && n.GetString() == "h2d");
    }

    [Fact]
    public void Efficiency_PipelineWallTimeOverBusiestStage()
    {
        var e = TwoRanks().Efficiency();
        Assert.Equal(1, e.BusiestRank);
        Assert.Equal(TraceTrack.Reload, e.BusiestStage);
        Assert.Equal(4500, e.BusiestUs, 6);
        Assert.Equal(9500, e.PipelineUs, 6);
        Assert.Equal(9500.0 / 4500, e.Value, 9);
        Assert.Contains("reload on rank 1", e.Describe("broadcast"));
    }

    [Fact]
    public void Efficiency_SerialStagesAreThreeAndNoBucketsIsZero()
    {
        // One rank, three 1 ms stages back to back, nothing overlapping.
        var serial = new UpdateTrace("c", "broadcast", [new RankTimeline(0, Start, Ms(3), [B(0, 0, 1, 0, 1, 1, 2, 2, 3)])]);
        Assert.Equal(3.0, serial.Efficiency().Value, 9);
        Assert.Equal(0, new UpdateTrace("c", "broadcast", [new RankTimeline(0, Start, Ms(1), [])]).Efficiency().Value);
    }

    [Fact]
    public void RankTimeline_RoundTripsExactlyAndRejectsGarbageNamingTheRank()
    {
        var timeline = TwoRanks().Ranks[1];
        var back = RankTimeline.FromJson(timeline.ToJson(), 1);
        Assert.Equal((timeline.Rank, timeline.Started, timeline.Duration), (back.Rank, back.Started, back.Duration));
        Assert.Equal(timeline.Buckets, back.Buckets);
        var e = Assert.Throws<UpdateFailedException>(() => RankTimeline.FromJson("{\"rank\":3}"u8.ToArray(), 3));
        Assert.Contains("rank 3", e.Message);
    }

    [Theory]
    [InlineData("trace.json", "p2p", "trace.p2p.json")]
    [InlineData("/tmp/a.b/trace.json", "broadcast", "/tmp/a.b/trace.broadcast.json")]
    [InlineData("trace", "p2p", "trace.p2p")]
    public void PathFor_PutsTheMethodBeforeTheExtension(string path, string method, string expected) =>
        Assert.Equal(expected, UpdateTrace.PathFor(path, method));
}
