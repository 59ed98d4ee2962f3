using CheckpointEngine.Cli.Bench;

namespace CheckpointEngine.Tests.Bench;

/// <summary>The machine line of <c>update</c> (and of <c>bench rank</c>), read by key.</summary>
public sealed class ResultLineTests
{
    [Fact]
    public void Parse_LauncherPrefix_UnknownKeysIgnored()
    {
        Assert.True(ResultLine.TryParse("[rank 3] result method=p2p bytes=1024 seconds=0.500000 buckets=2 stage=0.1 broadcast=0.2 efficiency=1.87 future=x reload=0.3 update=2\r", out var r));
        Assert.Equal(new ResultLine(3, "p2p", 1024, 0.5, 2, 0.1, 0.2, 0.3, 2, 1.87), r);
    }

    [Fact]
    public void Parse_Bare_MissingStages_AreNaN()
    {
        Assert.True(ResultLine.TryParse("result method=broadcast seconds=1.5 bytes=7", out var r));
        Assert.Equal(-1, r.Rank);
        Assert.Equal(1.5, r.Seconds);
        Assert.True(double.IsNaN(r.Reload));
        Assert.Equal(0, r.Update);
    }

    [Fact]
    public void Parse_Prepare_IsMarked_AnUpdateIsNot()
    {
        Assert.True(ResultLine.TryParse("[rank 1] result method=broadcast bytes=0 seconds=0.250000 buckets=0 prepare=1", out var prepare));
        Assert.Equal((true, 0.25), (prepare.Prepare, prepare.Seconds));
        Assert.True(ResultLine.TryParse("[rank 1] result method=broadcast bytes=9 seconds=0.5 buckets=1 network=4096 update=0", out var update));
        Assert.Equal((false, 4096L), (update.Prepare, update.Network));
        Assert.Equal(0, prepare.Network);
    }

    [Theory]
    [InlineData("[rank 0] update (p2p): 1.0 MiB in 0.5 s")]
    [InlineData("[rank 0] result method=p2p bytes=x seconds=1")]
    [InlineData("[rank 0] result method=p2p bytes=10")]
    public void Parse_OtherLines_False(string line) => Assert.False(ResultLine.TryParse(line, out _));

    [Fact]
    public void ParseAll_KeepsOrder()
    {
        var lines = ResultLine.ParseAll("join: 0.1 s\n[rank 1] result method=broadcast bytes=1 seconds=2 update=0\n[rank 0] result method=broadcast bytes=1 seconds=1 update=0\n");
        Assert.Equal([1, 0], lines.Select(l => l.Rank));
    }
}
