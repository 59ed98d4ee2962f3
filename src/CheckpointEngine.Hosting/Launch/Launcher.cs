using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Hosting.Launch;

/// <summary>
/// A torchrun-like single-node launcher: starts <see cref="LaunchOptions.NProc"/> ranks with torchrun's
/// variables, forwards every line they print prefixed <c>[rank R] </c>, and when one fails (or the
/// caller cancels) stops the rest, whole process trees, SIGTERM first and SIGKILL after a grace.
/// </summary>
public static partial class Launcher
{
    /// <summary>Returned when a rank's program cannot be started (as shells do for a missing command).</summary>
    public const int CannotStart = 127;

    /// <summary>How long the output of exited ranks may take to drain (a grandchild may hold the pipe open).</summary>
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(2);

    /// <summary>How long a SIGKILLed rank may take to be reaped.</summary>
    private static readonly TimeSpan KillTimeout = TimeSpan.FromSeconds(5);

    private const int SIGKILL = 9;
    private const int SIGTERM = 15;

    /// <summary>
    /// Runs the ranks to completion. Returns 0 when every rank exits 0, else the exit code of the first
    /// rank to fail (the others are stopped), or <see cref="CannotStart"/>. When <paramref name="ct"/>
    /// fires, stops every rank and throws <see cref="OperationCanceledException"/>. No rank outlives the call.
    /// </summary>
    /// <exception cref="ArgumentException">Bad options, or no free port on <see cref="LaunchOptions.MasterAddr"/>.</exception>
    public static async Task<int> RunAsync(LaunchOptions options, TextWriter stdout, TextWriter stderr, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(stdout);
        ArgumentNullException.ThrowIfNull(stderr);
        options.Validate();
        var port = options.MasterPort != 0 ? options.MasterPort : FreePort(options.MasterAddr);
        var sink = new LineSink(stdout, stderr);
        var ranks = new List<RankProcess>(options.NProc);
        try
        {
            for (var r = 0; r < options.NProc; r++)
            {
                ct.ThrowIfCancellationRequested();
                try
                {
                    ranks.Add(RankProcess.Start(options, r, port, sink));
                }
                catch (Win32Exception e)
                {
                    sink.Error($"launch: cannot start rank {r} ('{options.Command[0]}'): {e.Message}");
                    return CannotStart;
                }
            }
            return await SuperviseAsync(ranks, sink, ct).ConfigureAwait(false);
        }
        finally
        {
            await StopAsync(ranks, options.StopGrace, sink).ConfigureAwait(false);
            try
            {
                await Task.WhenAll(ranks.Select(r => r.Drained)).WaitAsync(DrainTimeout, CancellationToken.None).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // Something the ranks started still holds their output open; stop listening to it.
            }
            ranks.ForEach(r => r.Dispose());
        }
    }

    /// <summary>
    /// The command that runs this ckpt-engine with <paramref name="args"/>: its executable, or
    /// <c>dotnet</c> and the entry assembly when it runs under the <c>dotnet</c> host.
    /// </summary>
    public static IReadOnlyList<string> SelfCommand(params IEnumerable<string> args)
    {
        var host = Environment.ProcessPath ?? throw new InvalidOperationException("the path of this process is unknown");
        var command = new List<string> { host };
        if (Path.GetFileNameWithoutExtension(host).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
        {
            command.Add(Assembly.GetEntryAssembly()?.Location is { Length: > 0 } entry
                ? entry
                : throw new InvalidOperationException("running under dotnet without an entry assembly: cannot start another ckpt-engine"));
        }
        command.AddRange(args);
        return command;
    }

    /// <summary>Waits until every rank exits 0, one fails, or the caller cancels.</summary>
    private static async Task<int> SuperviseAsync(List<RankProcess> ranks, LineSink sink, CancellationToken ct)
    {
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = ct.Register(() => cancelled.TrySetResult());
        // A list, not a dictionary keyed by task: completed tasks of equal results may be one shared instance.
        var running = new List<RankProcess>(ranks);
        while (running.Count > 0)
        {
            var done = await Task.WhenAny(running.Select(r => (Task)r.Exited).Append(cancelled.Task)).ConfigureAwait(false);
            // A Ctrl-C reaches the ranks too; their exits then are the interruption, not a failure.
            if (done == cancelled.Task || ct.IsCancellationRequested)
            {
                sink.Error($"launch: interrupted; stopping {Describe(ranks.Where(r => !r.HasExited))}");
                throw new OperationCanceledException(ct);
            }
            var rank = running.First(r => r.Exited.IsCompleted);
            running.Remove(rank);
            var code = await rank.Exited.ConfigureAwait(false);
            if (code != 0)
            {
                try
                {
                    // Its last words come before the verdict.
                    await rank.Drained.WaitAsync(TimeSpan.FromSeconds(1), CancellationToken.None).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    // Held open by a process it left behind; report now.
                }
                var others = running.Where(r => !r.HasExited).ToList();
                sink.Error($"launch: rank {rank.Rank} (pid {rank.Pid}) exited with code {code}{(others.Count > 0 ? $"; stopping {Describe(others)}" : "")}");
                return code;
            }
        }
        return 0;
    }

    /// <summary>SIGTERM to every running rank's process tree, SIGKILL to what is left after the grace; bounded.</summary>
    private static async Task StopAsync(List<RankProcess> ranks, TimeSpan grace, LineSink sink)
    {
        var running = ranks.Where(r => !r.HasExited).ToList();
        if (running.Count == 0)
        {
            return;
        }
        var targets = ProcessTree(running.Select(r => r.Pid));
        Signal(targets, SIGTERM);
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < grace && (running.Any(r => !r.HasExited) || targets.Any(IsAlive)))
        {
            await Task.Delay(TimeSpan.FromMilliseconds(20), CancellationToken.None).ConfigureAwait(false);
        }
        var stubborn = running.Where(r => !r.HasExited).ToList();
        var left = ProcessTree(stubborn.Select(r => r.Pid)).Concat(targets).Where(IsAlive).Distinct().ToList();
        if (left.Count == 0)
        {
            return;
        }
        sink.Error($"launch: {left.Count} process(es) ({string.Join(", ", left.Select(p => p.Pid))}) still running {grace.TotalSeconds:0.###} s after SIGTERM; killing them");
        Signal(left, SIGKILL);
        stubborn.ForEach(r => r.Kill());
        try
        {
            await Task.WhenAll(stubborn.Select(r => r.Exited)).WaitAsync(KillTimeout, CancellationToken.None).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            sink.Error($"launch: {Describe(stubborn.Where(r => !r.HasExited))} still running {KillTimeout.TotalSeconds:0} s after SIGKILL");
        }
    }

    private static string Describe(IEnumerable<RankProcess> ranks)
    {
        var list = ranks.ToList();
        return list.Count switch
        {
            0 => "no ranks",
            1 => $"rank {list[0].Rank}",
            _ => $"ranks {string.Join(", ", list.Select(r => r.Rank))}",
        };
    }

    private static int FreePort(string masterAddr)
    {
        var address = IPAddress.TryParse(masterAddr, out var ip) ? ip : IPAddress.Any; // A host name: any interface.
        try
        {
            using var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(address, 0));
            return ((IPEndPoint)socket.LocalEndPoint!).Port;
        }
        catch (SocketException e)
        {
            throw new ArgumentException($"cannot pick a free port on master address {masterAddr} ({e.Message}); is it an address of this host?", e);
        }
    }

    /// <summary>A process by pid and start time, so a recycled pid is never signalled.</summary>
    private readonly record struct ProcessId(int Pid, ulong StartTime);

    /// <summary>The processes rooted at <paramref name="roots"/>, children included (Linux /proc; elsewhere the roots only).</summary>
    private static List<ProcessId> ProcessTree(IEnumerable<int> roots)
    {
        var parents = new Dictionary<int, List<int>>();
        var starts = new Dictionary<int, ulong>();
        if (Directory.Exists("/proc/self"))
        {
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && TryReadStat(pid, out var stat))
                {
                    starts[pid] = stat.StartTime;
                    if (!parents.TryGetValue(stat.Parent, out var children))
                    {
                        parents[stat.Parent] = children = [];
                    }
                    children.Add(pid);
                }
            }
        }
        var tree = new List<ProcessId>();
        var seen = new HashSet<int>();
        var queue = new Queue<int>(roots);
        while (queue.TryDequeue(out var pid))
        {
            if (!seen.Add(pid))
            {
                continue;
            }
            tree.Add(new ProcessId(pid, starts.GetValueOrDefault(pid)));
            foreach (var child in parents.GetValueOrDefault(pid) ?? [])
            {
                queue.Enqueue(child);
            }
        }
        return tree;
    }

    private static void Signal(IEnumerable<ProcessId> processes, int signal)
    {
        foreach (var p in processes.Where(IsAlive))
        {
            _ = kill(p.Pid, signal); // It may have exited since: nothing to do then.
        }
    }

    /// <summary>Still running and still the same process (not a zombie, not a recycled pid).</summary>
    private static bool IsAlive(ProcessId p)
    {
        if (!Directory.Exists("/proc/self"))
        {
            return p.StartTime == 0 && ProcessExists(p.Pid);
        }
        return TryReadStat(p.Pid, out var stat) && stat.StartTime == p.StartTime && stat.State is not ('Z' or 'X');
    }

    private static bool ProcessExists(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private readonly record struct Stat(char State, int Parent, ulong StartTime);

    /// <summary>Reads state, parent and start time from <c>/proc/PID/stat</c>; false when the process is gone.</summary>
    private static bool TryReadStat(int pid, out Stat stat)
    {
        stat = default;
        string text;
        try
        {
            text = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
        // "pid (comm) state ppid ... starttime(22nd)": comm may hold spaces and parentheses.
        var close = text.LastIndexOf(')');
        var fields = close < 0 ? [] : text[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (fields.Length < 20
            || !int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out var parent)
            || !ulong.TryParse(fields[19], NumberStyles.None, CultureInfo.InvariantCulture, out var start))
        {
            return false;
        }
        stat = new Stat(fields[0][0], parent, start);
        return true;
    }

    // Kept here rather than in Interop/Libc: only the launcher signals processes.
    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int sig);

    /// <summary>Writes whole lines to the launcher's writers, one at a time, so ranks never interleave within a line.</summary>
    private sealed class LineSink(TextWriter stdout, TextWriter stderr)
    {
        private readonly Lock _gate = new();

        public void Line(int rank, bool error, string line) => Write(error ? stderr : stdout, $"[rank {rank}] {line}");

        public void Error(string message) => Write(stderr, message);

        private void Write(TextWriter writer, string text)
        {
            lock (_gate)
            {
                writer.WriteLine(text);
                writer.Flush();
            }
        }
    }

    /// <summary>One rank's process and the tasks that forward its output.</summary>
    private sealed class RankProcess : IDisposable
    {
        private static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false);

        private readonly Process _process;

        private RankProcess(int rank, Process process, LineSink sink)
        {
            Rank = rank;
            _process = process;
            Pid = process.Id;
            Exited = WaitAsync(process);
            Drained = Task.WhenAll(
                Task.Run(() => PumpAsync(process.StandardOutput, error: false, sink)),
                Task.Run(() => PumpAsync(process.StandardError, error: true, sink)));
        }

        public int Rank { get; }

        public int Pid { get; }

        /// <summary>The exit code (128 + N when killed by signal N).</summary>
        public Task<int> Exited { get; }

        /// <summary>Completes when both output pipes reach end of file.</summary>
        public Task Drained { get; }

        public bool HasExited => Exited.IsCompleted;

        public static RankProcess Start(LaunchOptions options, int rank, int port, LineSink sink)
        {
            var psi = new ProcessStartInfo(options.Command[0])
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                StandardOutputEncoding = Utf8,
                StandardErrorEncoding = Utf8,
                WorkingDirectory = options.WorkingDirectory ?? "",
            };
            foreach (var arg in options.Command.Skip(1))
            {
                psi.ArgumentList.Add(arg);
            }
            var env = psi.Environment;
            if (options.Token is { } token)
            {
                env[RankConfig.TokenVariable] = token;
            }
            Apply(env, options.Environment);
            var world = options.NProc.ToString(CultureInfo.InvariantCulture);
            var r = rank.ToString(CultureInfo.InvariantCulture);
            env["RANK"] = r;
            env["LOCAL_RANK"] = r;
            env["WORLD_SIZE"] = world;
            env["LOCAL_WORLD_SIZE"] = world;
            env["MASTER_ADDR"] = options.MasterAddr;
            env["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture);
            Apply(env, options.RankEnvironment?.Invoke(rank));
            var process = Process.Start(psi) ?? throw new Win32Exception($"no process started for '{psi.FileName}'");
            return new RankProcess(rank, process, sink);
        }

        public void Kill()
        {
            try
            {
                _process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // Exited meanwhile.
            }
        }

        public void Dispose() => _process.Dispose();

        private static void Apply(IDictionary<string, string?> env, IReadOnlyDictionary<string, string?>? extra)
        {
            foreach (var (name, value) in extra ?? new Dictionary<string, string?>())
            {
                if (value is null)
                {
                    env.Remove(name);
                }
                else
                {
                    env[name] = value;
                }
            }
        }

        private static async Task<int> WaitAsync(Process process)
        {
            await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            return process.ExitCode;
        }

        private async Task PumpAsync(StreamReader reader, bool error, LineSink sink)
        {
            try
            {
                while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
                {
                    sink.Line(Rank, error, line);
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                // The pipe was closed under us (disposed after the drain timeout) or our own writer is gone.
            }
        }
    }
}
