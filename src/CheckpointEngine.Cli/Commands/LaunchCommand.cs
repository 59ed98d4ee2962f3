using System.CommandLine;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using CheckpointEngine.Cli.Progress;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine launch --nproc N [--master-addr A] [--master-port P] [--token-from-env] -- COMMAND...</c>:
/// starts N ranks on this host, torchrun style (see <see cref="Launcher"/>).
/// </summary>
internal static class LaunchCommand
{
    private const int MaxProc = 4096;

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var nproc = new Option<int>("--nproc") { Description = "ranks to start on this host", Required = true };
        var masterAddr = new Option<string>("--master-addr")
        {
            Description = "address rank 0 serves the rendezvous store on",
            DefaultValueFactory = _ => LaunchOptions.DefaultMasterAddr,
        };
        var masterPort = new Option<int?>("--master-port") { Description = "port of the rendezvous store (default: a free one)" };
        var tokenFromEnv = new Option<bool>("--token-from-env")
        {
            Description = $"require {RankConfig.TokenVariable} in the environment (default: inherit it when set, else make a fresh one for this launch)",
        };
        var verbose = new Option<bool>("--verbose") { Description = "with update on a console: show every rank's log lines above the live progress view" };
        var program = new Argument<string[]>("command")
        {
            Description = "after --: a ckpt-engine command (e.g. inspect DIR), or a program and its arguments",
            Arity = ArgumentArity.ZeroOrMore,
        };
        nproc.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() is < 1 or > MaxProc)
            {
                r.AddError($"--nproc must be in [1, {MaxProc}]");
            }
        });
        masterAddr.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<string>() is not { } a || string.IsNullOrWhiteSpace(a) || a.Any(char.IsWhiteSpace))
            {
                r.AddError("--master-addr must be a host name or an IP address");
            }
        });
        masterPort.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int?>() is < 1 or > 65535)
            {
                r.AddError("--master-port must be in [1, 65535] (leave it out to pick a free one)");
            }
        });
        var command = new Command("launch", "Start N ranks of a command on this host with torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, ...).")
        {
            nproc, masterAddr, masterPort, tokenFromEnv, verbose, program,
        };
        command.Validators.Add(r =>
        {
            if (r.GetValue(program) is not { Length: > 0 })
            {
                r.AddError("launch needs a command after --, e.g. ckpt-engine launch --nproc 2 -- /bin/sh -c 'echo $RANK'");
            }
        });
        command.SetAction(async (result, ct) =>
        {
            var subcommands = result.RootCommandResult.Command.Subcommands.SelectMany(c => c.Aliases.Append(c.Name)).ToHashSet(StringComparer.Ordinal);
            if (!TryResolveCommand(result.GetValue(program)!, subcommands, out var argv, out var why)
                || !TryResolveToken(result.GetValue(tokenFromEnv), Environment.GetEnvironmentVariable(RankConfig.TokenVariable), out var token, out why))
            {
                stderr.WriteLine($"error: {why}");
                return CkptEngineCli.BadInput;
            }
            // ckpt-engine update ranks report progress as lines; one view shows them all.
            var updating = result.GetValue(program)![0] == "update" && subcommands.Contains("update");
            await using var view = updating ? new LaunchView(result.GetValue(nproc), stdout, stderr, LaunchView.IsInteractive(stdout), result.GetValue(verbose)) : null;
            var options = new LaunchOptions
            {
                NProc = result.GetValue(nproc),
                Environment = updating ? new Dictionary<string, string?>([LaunchView.RankVariable]) : null,
                MasterAddr = result.GetValue(masterAddr)!,
                MasterPort = result.GetValue(masterPort) ?? 0,
                Command = argv,
                Token = token,
            };
            // Our own handlers: a synchronous Invoke does not turn SIGTERM into cancellation by itself.
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var exitCode = 130;
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => Stop(c, 130));
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => Stop(c, 143));
            void Stop(PosixSignalContext signal, int code)
            {
                signal.Cancel = true;
                exitCode = code;
                stop.Cancel();
            }
            try
            {
                return await Launcher.RunAsync(options, view?.Out ?? stdout, view?.Err ?? stderr, stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return exitCode; // 128 + the signal, as a shell reports it.
            }
        });
        return command;
    }

    /// <summary>
    /// What runs on each rank. A first word with a '/' is a program path; a ckpt-engine command name
    /// runs this ckpt-engine; any other name is a program on PATH (files in the current directory need ./).
    /// </summary>
    internal static bool TryResolveCommand(IReadOnlyList<string> command, IReadOnlySet<string> subcommands, out IReadOnlyList<string> argv, out string why)
    {
        argv = [];
        var first = command.Count > 0 ? command[0] : "";
        if (first.Length == 0)
        {
            why = "launch needs a command after --";
            return false;
        }
        if (first.Contains('/', StringComparison.Ordinal))
        {
            var path = Path.GetFullPath(first);
            if (!File.Exists(path))
            {
                why = $"no such file: {first}";
                return false;
            }
            if (!IsExecutable(path))
            {
                why = $"{first} is not executable (chmod +x it, or run it through its interpreter, e.g. -- /bin/sh {first})";
                return false;
            }
            argv = [path, .. command.Skip(1)];
        }
        else if (subcommands.Contains(first))
        {
            argv = Launcher.SelfCommand(command);
        }
        else if (FindOnPath(first) is { } found)
        {
            argv = [found, .. command.Skip(1)];
        }
        else
        {
            why = $"'{first}' is neither a ckpt-engine command ({string.Join(", ", subcommands.Order(StringComparer.Ordinal))}) nor a program on PATH"
                + (File.Exists(first) ? $"; write ./{first} to run the file in the current directory" : "");
            return false;
        }
        why = "";
        return true;
    }

    /// <summary>
    /// The token to hand the ranks: with <c>--token-from-env</c> the environment's, which must be set;
    /// otherwise the environment's when set (inherited: null), else a fresh random one for this launch.
    /// </summary>
    internal static bool TryResolveToken(bool fromEnv, string? envToken, out string? token, out string why)
    {
        token = null;
        why = "";
        if (!string.IsNullOrWhiteSpace(envToken))
        {
            return true;
        }
        if (fromEnv)
        {
            why = $"--token-from-env: {RankConfig.TokenVariable} is not set";
            return false;
        }
        token = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        return true;
    }

    private static string? FindOnPath(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var path = Path.Combine(dir, name);
            if (File.Exists(path) && IsExecutable(path))
            {
                return Path.GetFullPath(path);
            }
        }
        return null;
    }

    private static bool IsExecutable(string path) =>
        OperatingSystem.IsWindows() || (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
}
