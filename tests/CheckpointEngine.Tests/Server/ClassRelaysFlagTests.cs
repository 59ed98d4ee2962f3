using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Tests.Server;

/// <summary>update --class-relays takes auto, on or off, and --buckets-in-flight 1 to 8; anything else is a usage error before anything runs.</summary>
public sealed class ClassRelaysFlagTests
{
    [Fact]
    public void ClassRelays_UnknownValue_IsAUsageErrorNamingTheChoices()
    {
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(["update", "--checkpoint-path", "/x", "--endpoint", "http://127.0.0.1:1", "--class-relays", "maybe"], new StringWriter(), stderr);

        Assert.NotEqual(0, code);
        Assert.Contains("Argument 'maybe' not recognized. Must be one of:", stderr.ToString());
        Assert.Contains("'off'", stderr.ToString());
    }

    [Theory]
    [InlineData("0")]
    [InlineData("9")]
    public void BucketsInFlight_OutsideOneToEight_IsAUsageError(string value)
    {
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(["update", "--checkpoint-path", "/x", "--endpoint", "http://127.0.0.1:1", "--buckets-in-flight", value], new StringWriter(), stderr);

        Assert.NotEqual(0, code);
        Assert.Contains("--buckets-in-flight must be in [1, 8]", stderr.ToString());
    }
}
