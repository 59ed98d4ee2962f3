using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Tests.Tracing;

/// <summary>--trace is checked when the command line is parsed, before anything runs.</summary>
public sealed class TraceFlagTests
{
    [Theory]
    [InlineData("demo", "--trace", "/no/such/folder/t.json")]
    [InlineData("update", "--checkpoint-path", "/x", "--endpoint", "http://127.0.0.1:1", "--trace", "/no/such/folder/t.json")]
    public void Trace_FolderMissing_IsAUsageErrorNamingIt(params string[] args)
    {
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(args, new StringWriter(), stderr);
        Assert.NotEqual(0, code);
        Assert.Contains("--trace /no/such/folder/t.json: directory /no/such/folder does not exist", stderr.ToString());
    }
}
