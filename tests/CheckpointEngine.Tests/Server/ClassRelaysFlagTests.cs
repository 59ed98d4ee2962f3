using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Tests.Server;

/// <summary>update --class-relays takes auto, on or off; anything else is a usage error before anything runs.</summary>
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
}
