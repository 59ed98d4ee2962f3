using System.CommandLine;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// The <c>ckpt-engine</c> command line. Program.cs only forwards to <see cref="Run"/>, so tests run
/// every command in-process with their own writers.
/// </summary>
public static class CkptEngineCli
{
    /// <summary>Exit code for bad input (a malformed file, a missing path) and for failures reported as one line (a failed update, an unreachable peer).</summary>
    public const int BadInput = 1;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("CheckpointEngine for .NET: fast weight updates for LLM inference engines.")
        {
            DemoCommand.Create(stdout, stderr),
            BenchCommand.Create(stdout, stderr),
            InspectCommand.Create(stdout),
            LaunchCommand.Create(stdout, stderr),
            QuantizeCommand.Create(stdout),
            SampleCommand.Create(stdout),
            SimulateCommand.Create(stdout, stderr),
            UpdateCommand.Create(stdout),
            WorkerCommand.Create(stdout),
            ServeCommand.Create(stdout),
            StatusCommand.Create(stdout),
            TraceCommand.Create(stdout, stderr),
            SoakCommand.Create(stdout, stderr),
            VerifyCommand.Create(stdout),
        };
        try
        {
            return root.Parse(args).Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        // Errors a user can act on are ours (CheckpointEngineException: bad files, settings, flags, failed
        // updates); the system's own say a file is missing or unreadable, or an engine does not answer.
        // Anything else is a bug and keeps its stack trace.
        catch (Exception e) when (e is CheckpointEngineException or IOException or UnauthorizedAccessException or HttpRequestException)
        {
            stderr.WriteLine($"error: {e.Message}");
            return BadInput;
        }
    }
}
