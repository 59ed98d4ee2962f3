using CheckpointEngine.Cli.Bench;
using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Tests.Bench;

/// <summary>The list flags of <c>bench</c> and their errors; validation fails before anything is launched.</summary>
public sealed class BenchSettingsTests
{
    [Fact]
    public void ParseRanks_List_InOrder()
    {
        Assert.True(BenchSettings.TryParseRanks("1, 2,4", out var ranks, out _));
        Assert.Equal([1, 2, 4], ranks);
    }

    [Theory]
    [InlineData("0", "'0' is not a rank count in [1, 64]")]
    [InlineData("1,65", "'65' is not a rank count")]
    [InlineData("1,x", "'x' is not a rank count")]
    [InlineData("1,,2", "'' is not a rank count")]
    [InlineData("2,2", "'2,2' lists a value twice")]
    [InlineData("", "give at least one value")]
    public void ParseRanks_Bad_SaysWhich(string text, string error)
    {
        Assert.False(BenchSettings.TryParseRanks(text, out _, out var message));
        Assert.StartsWith("--ranks: ", message);
        Assert.Contains(error, message);
    }

    [Fact]
    public void ParseSizes_Units()
    {
        Assert.True(BenchSettings.TryParseSizes("256MiB,2GiB,1.5GiB,8MB", out var sizes, out _));
        Assert.Equal([256L << 20, 2L << 30, 3L << 29, 8_000_000], sizes);
    }

    [Theory]
    [InlineData("512KiB", "'512KiB' is not a size of at least 1MiB")]
    [InlineData("256MiB,big", "'big' is not a size")]
    [InlineData("-1GiB", "'-1GiB' is not a size")]
    [InlineData("1GiB,1024MiB", "lists a value twice")]
    public void ParseSizes_Bad_SaysWhich(string text, string error)
    {
        Assert.False(BenchSettings.TryParseSizes(text, out _, out var message));
        Assert.StartsWith("--size: ", message);
        Assert.Contains(error, message);
    }

    [Fact]
    public void ParseMethods_KnownOnly()
    {
        Assert.True(BenchSettings.TryParseMethods("p2p,broadcast", out var methods, out _));
        Assert.Equal(["p2p", "broadcast"], methods);
        Assert.False(BenchSettings.TryParseMethods("broadcast,nccl", out _, out var message));
        Assert.Equal("--method: 'nccl' is not one of broadcast, p2p, p2p-tcp, p2p-ucx, verify, tp-full, tp-sharded, p2p-join, registration, collective, quantize", message);
    }

    [Fact]
    public void ParseMethods_RegistrationAndCollective_AlongsideUpdates()
    {
        Assert.True(BenchSettings.TryParseMethods("registration, collective,broadcast,quantize", out var methods, out _));
        Assert.Equal(["registration", "collective", "broadcast", "quantize"], methods);
        Assert.True(BenchSettings.TryParseMethods("collective", out var one, out _));
        Assert.Equal(["collective"], one);
    }

    [Theory]
    [InlineData("registration,registration", "'registration,registration' lists a value twice")]
    [InlineData("collective,Collective", "'Collective' is not one of")]
    [InlineData("registrations", "'registrations' is not one of")]
    [InlineData("broadcast,", "'' is not one of")]
    public void ParseMethods_Bad_SaysWhich(string text, string error)
    {
        Assert.False(BenchSettings.TryParseMethods(text, out _, out var message));
        Assert.StartsWith("--method: ", message);
        Assert.Contains(error, message);
    }

    [Theory]
    [InlineData("1", "registration,broadcast,p2p")]
    [InlineData("2", "collective")]
    [InlineData("1,4", "collective,registration")]
    public void Check_MethodsWithRanks_Fine(string ranks, string methods)
    {
        Assert.True(BenchSettings.TryParseRanks(ranks, out var r, out _));
        Assert.True(BenchSettings.TryParseMethods(methods, out var m, out _));
        Assert.True(BenchSettings.TryCheck(r, m, out var error), error);
    }

    [Fact]
    public void Check_CollectiveOnOneRank_NamesBothFlags()
    {
        Assert.False(BenchSettings.TryCheck([1], ["broadcast", "collective"], out var error));
        Assert.Equal("--method collective broadcasts from rank 0 to the others: give --ranks with a count of at least 2 (got --ranks 1)", error);
    }

    [Theory]
    [InlineData(256L << 20, "256MiB")]
    [InlineData(2L << 30, "2GiB")]
    [InlineData(3L << 29, "1.5GiB")]
    [InlineData(4L << 20, "4MiB")]
    [InlineData(1000, "1000B")]
    public void SizeLabel_AsAskedFor(long bytes, string label)
    {
        Assert.Equal(label, BenchSettings.SizeLabel(bytes));
        if (bytes >= BenchSettings.MinSize)
        {
            Assert.True(BenchSettings.TryParseSizes(label, out var back, out _));
            Assert.Equal(bytes, back[0]);
        }
    }

    [Fact]
    public void P2PTransports_TurnP2PIntoOneMethodPerTransport()
    {
        Assert.True(BenchSettings.TryExpandTransports(["broadcast", "p2p"], "tcp,ucx", out var methods, out _));
        Assert.Equal(["broadcast", BenchSettings.P2PTcp, BenchSettings.P2PUcx], methods);
        Assert.True(BenchSettings.IsP2P(BenchSettings.P2PUcx, out var transport) && transport == "ucx");
        Assert.True(BenchSettings.IsP2P("p2p", out transport) && transport is null);
        Assert.False(BenchSettings.IsP2P("broadcast", out _));
        Assert.Equal(Baseline.Tcp, Baseline.For(BenchSettings.P2PTcp));
        Assert.Equal(Baseline.Memcpy, Baseline.For(BenchSettings.P2PUcx));
        Assert.True(BenchSettings.IsP2P(BenchSettings.P2PJoin, out transport) && transport is null); // A join reads as the ranks' store does.
        Assert.Equal(Baseline.Tcp, Baseline.For(BenchSettings.P2PJoin));
    }

    [Theory]
    [InlineData("--ranks 1,0", "--ranks: '0' is not a rank count in [1, 64]")]
    [InlineData("--size 256MiB,10KB", "--size: '10KB' is not a size of at least 1MiB")]
    [InlineData("--method broadcast,all", "--method: 'all' is not one of broadcast, p2p, p2p-tcp, p2p-ucx, verify, tp-full, tp-sharded, p2p-join, registration, collective, quantize")]
    [InlineData("--ranks 1 --method collective", "--method collective broadcasts from rank 0 to the others: give --ranks with a count of at least 2 (got --ranks 1)")]
    [InlineData("--bucket-size 0", "--bucket-size: '0' is not a size of at least 1MiB")]
    [InlineData("--repeat 0", "--repeat must be in [1, 100]")]
    [InlineData("--p2p-transport tcp,rdma", "--p2p-transport: 'rdma' is not a P2P transport (tcp, ucx or auto)")]
    [InlineData("--out /nonexistent-ckpt-dir/bench.md", "--out /nonexistent-ckpt-dir/bench.md: directory /nonexistent-ckpt-dir does not exist")]
    public void Cli_BadFlag_IsUsageError(string flags, string error)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(["bench", .. flags.Split(' ')], stdout, stderr);
        Assert.NotEqual(0, code);
        Assert.Contains(error, stderr.ToString());
    }
}
