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

    /// <summary>
    /// Bucket 0 of 8 MB goes 10.0.0.1 (rank 0) → 10.0.0.2 (rank 1) → 10.0.0.3 (rank 2). The first link is slow: its sender blocked 1 ms and
    /// its last bytes arrived 7 ms after its last send returned (kernel buffers); its receiver waited 8 ms. The second is fast: rank 1 sent
    /// as bytes came (0.5 ms blocked, the last arrived 0.1 ms after), though rank 2 waited as long as rank 1 did.
    /// </summary>
    private static UpdateTrace Chain()
    {
        LinkTiming L(int peer, string host, bool sent, double start, double end, double busy) => new(0, peer, host, sent, 8_000_000, Ms(start), Ms(end), Ms(busy));
        BucketTiming[] buckets = [B(0, 0, 8_000_000, 0, 1, 1, 11, 11, 12)];
        return new UpdateTrace("c", "broadcast",
        [
            new RankTimeline(0, Start, Ms(12), buckets, [L(1, "10.0.0.2", true, 1.5, 3, 1)]),
            new RankTimeline(1, Start, Ms(12), buckets, [L(0, "10.0.0.1", false, 2, 10, 8), L(2, "10.0.0.3", true, 2.1, 10.2, 0.5)]),
            new RankTimeline(2, Start + Ms(1), Ms(11), buckets, [L(1, "10.0.0.2", false, 1.1, 9.3, 8)]), // Started 1 ms later: 2.1 to 10.3 ms.
        ]);
    }

    [Fact]
    public void Legs_PairBothEnds_TheSlowLinkIsSlowAtBoth_TheOneDownstreamOnlyAtItsReceiver()
    {
        var legs = Chain().Legs();
        Assert.Equal(2, legs.Count);
        var slow = Assert.Single(legs, l => l.Link == "10.0.0.1 → 10.0.0.2");
        Assert.Equal((0, 0, 1, 8_000_000L), (slow.Bucket, slow.From, slow.To, slow.Bytes));
        Assert.Equal((2000.0, 8000.0), (slow.StartUs, slow.DurationUs));
        Assert.Equal((Ms(8), Ms(8)), (slow.SenderTime, slow.ReceiverTime)); // 1 ms blocked + 7 ms until its last bytes arrived.
        var fast = Assert.Single(legs, l => l.Link == "10.0.0.2 → 10.0.0.3");
        Assert.Equal((Ms(0.6), Ms(8)), (fast.SenderTime, fast.ReceiverTime));
        var totals = TraceLeg.Totals(legs);
        Assert.Equal(["10.0.0.1 → 10.0.0.2", "10.0.0.2 → 10.0.0.3"], totals.Select(t => t.Link));
        Assert.Equal(1e9, totals[0].Rate, 3);
        Assert.Equal(8e6 / 0.6e-3, totals[1].Rate, 3);
    }

    [Fact]
    public void Write_Links_ATrackPerLinkAfterTheRanks_SlowestInOtherData()
    {
        var root = Write(Chain());
        var meta = Events(root, "M");
        Assert.Contains(meta, e => e.GetProperty("name").GetString() == "process_name" && e.GetProperty("pid").GetInt32() == 3 && e.GetProperty("args").GetProperty("name").GetString() == "links");
        var link = Assert.Single(meta, e => e.GetProperty("name").GetString() == "thread_name" && e.GetProperty("args").GetProperty("name").GetString() == "10.0.0.1 → 10.0.0.2");
        var span = Assert.Single(Events(root, "X"), e => e.GetProperty("cat").GetString() == "link" && e.GetProperty("tid").GetInt32() == link.GetProperty("tid").GetInt32());
        Assert.Equal((3, "bucket 0", 2000.0, 8000.0), (span.GetProperty("pid").GetInt32(), span.GetProperty("name").GetString(), span.GetProperty("ts").GetDouble(), span.GetProperty("dur").GetDouble()));
        var args = span.GetProperty("args");
        Assert.Equal((8_000_000L, 0, 1, 8000.0, 8000.0, 1.0), (args.GetProperty("bytes").GetInt64(), args.GetProperty("from").GetInt32(), args.GetProperty("to").GetInt32(),
            args.GetProperty("sender_us").GetDouble(), args.GetProperty("receiver_us").GetDouble(), args.GetProperty("gbps").GetDouble()));
        Assert.Equal("10.0.0.1 → 10.0.0.2", root.GetProperty("otherData").GetProperty("slowest_link").GetString());
        Assert.StartsWith("10.0.0.1 → 10.0.0.2 1.000 GB/s (8000000 bytes; sender 0.008 s, receiver 0.008 s); 10.0.0.2 → 10.0.0.3 13.333 GB/s", root.GetProperty("otherData").GetProperty("links").GetString());
    }

    [Fact]
    public void Write_OneHost_NoLinksProcess()
    {
        var root = Write(TwoRanks());
        Assert.DoesNotContain(Events(root, "M"), e => e.GetProperty("args").TryGetProperty("name", out var n) && n.GetString() == "links");
        Assert.False(root.GetProperty("otherData").TryGetProperty("slowest_link", out _));
    }

    [Fact]
    public void RankTimeline_RoundTripsLinks()
    {
        var timeline = Chain().Ranks[1];
        Assert.Equal(timeline.Links, RankTimeline.FromJson(timeline.ToJson(), 1).Links);
    }

    [Theory]
    [InlineData("trace.json", "p2p", "trace.p2p.json")]
    [InlineData("/tmp/a.b/trace.json", "broadcast", "/tmp/a.b/trace.broadcast.json")]
    [InlineData("trace", "p2p", "trace.p2p")]
    public void PathFor_PutsTheMethodBeforeTheExtension(string path, string method, string expected) =>
        Assert.Equal(expected, UpdateTrace.PathFor(path, method));
}
