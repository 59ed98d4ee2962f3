using System.CommandLine;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Hosting.Cli;

/// <summary>
/// The <c>ckpt-engine</c> command line. Program.cs only forwards to <see cref="Run"/>, so tests run
/// every command in-process with their own writers.
/// </summary>
public static class CkptEngineCli
{
    /// <summary>Exit code for bad input (a malformed file, a missing path).</summary>
    public const int BadInput = 1;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("CheckpointEngine for .NET: fast weight updates for LLM inference engines.")
        {
            InspectCommand.Create(stdout),
            SampleCommand.Create(stdout),
            WorkerCommand.Create(stdout),
        };
        try
        {
            return root.Parse(args).Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is CheckpointFormatException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            stderr.WriteLine($"error: {e.Message}");
            return BadInput;
        }
    }
}
