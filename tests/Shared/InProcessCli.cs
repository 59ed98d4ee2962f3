using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Tests.Support;

/// <summary>Runs <c>ckpt-engine</c> in this process with its own writers: exit code, stdout, stderr.</summary>
public static class InProcessCli
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
