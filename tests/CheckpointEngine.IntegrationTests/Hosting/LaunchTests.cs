using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.Hosting.Launch;

namespace CheckpointEngine.IntegrationTests.Hosting;

/// <summary>
/// <c>ckpt-engine launch</c> and <see cref="Launcher"/>: ranks get torchrun's variables, their output comes
/// back prefixed, a failing rank stops the rest (process trees included) and decides the exit code.
/// </summary>
public sealed partial class LaunchTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-launch-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = await Task.Run(() => CkptEngineCli.Run(args, stdout, stderr)).WaitAsync(Deadline, Ct);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>A shell snippet that waits (bounded) until the pid files of <paramref name="ranks"/> exist.</summary>
    private string AwaitPids(params int[] ranks) =>
        $"i=0; while {string.Join(" || ", ranks.Select(r => $"[ ! -s {_dir}/{r} ]"))}; do i=$((i+1)); [ $i -gt 500 ] && exit 99; sleep 0.02; done";

    /// <summary>Writes this shell's pid (or <paramref name="pid"/>) to the rank's pid file atomically.</summary>
    private string WritePid(string pid = "$$") => $"echo {pid} > {_dir}/$RANK.tmp && mv {_dir}/$RANK.tmp {_dir}/$RANK";

    private int Pid(int rank) => int.Parse(File.ReadAllText(Path.Combine(_dir, rank.ToString(CultureInfo.InvariantCulture))).Trim(), CultureInfo.InvariantCulture);

    /// <summary>Gone, or a zombie waiting for a reaper outside our control (an orphaned grandchild).</summary>
    private static async Task AssertGone(int pid)
    {
        var stat = $"/proc/{pid}/stat";
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(5))
        {
            try
            {
                var text = File.ReadAllText(stat);
                if (text[(text.LastIndexOf(')') + 2)..].StartsWith('Z'))
                {
                    return;
                }
            }
            catch (IOException)
            {
                return;
            }
            await Task.Delay(20, Ct);
        }
        Assert.Fail($"process {pid} is still running: {File.ReadAllText(stat)}");
    }

    [Fact]
    public async Task Launch_SetsTorchrunVariablesPerRank()
    {
        var (code, stdout, stderr) = await Run("launch", "--nproc", "3", "--", "/bin/sh", "-c",
            "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT\"");
        Assert.True(code == 0, stderr);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        var port = int.Parse(lines[0].Split(' ')[^1], CultureInfo.InvariantCulture);
        Assert.InRange(port, 1, 65535);
        for (var r = 0; r < 3; r++)
        {
            Assert.Contains($"[rank {r}] {r} 3 {r} 3 127.0.0.1 {port}", lines);
        }
    }

    [Fact]
    public async Task Launch_MasterAddrAndPort_ArePassedOn()
    {
        var (code, stdout, stderr) = await Run("launch", "--nproc", "1", "--master-addr", "localhost", "--master-port", "29512", "--",
            "/bin/sh", "-c", "echo $MASTER_ADDR:$MASTER_PORT");
        Assert.True(code == 0, stderr);
        Assert.Equal("[rank 0] localhost:29512", stdout.Trim());
    }

    [Fact]
    public async Task Launch_PrefixesEveryLine_StderrToStderr_NoInterleaving()
    {
        const int Lines = 200;
        var (code, stdout, stderr) = await Run("launch", "--nproc", "4", "--", "/bin/sh", "-c",
            $"i=0; while [ $i -lt {Lines} ]; do echo \"out $RANK $i $(printf '%0100d' 0)\"; echo \"err $RANK $i\" >&2; i=$((i+1)); done");
        Assert.True(code == 0, stderr);
        var outLines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4 * Lines, outLines.Length);
        Assert.All(outLines, l => Assert.Matches(OutLine(), l));
        var errLines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4 * Lines, errLines.Length);
        Assert.All(errLines, l => Assert.Matches(ErrLine(), l));
        for (var r = 0; r < 4; r++)
        {
            // Each rank's lines arrive in order.
            var mine = outLines.Where(l => l.StartsWith($"[rank {r}] ", StringComparison.Ordinal)).Select(l => int.Parse(l.Split(' ')[4], CultureInfo.InvariantCulture));
            Assert.Equal(Enumerable.Range(0, Lines), mine);
        }
    }

    [Fact]
    public async Task Launch_AllSucceed_ReturnsZero()
    {
        var (code, stdout, stderr) = await Run("launch", "--nproc", "2", "--", "/bin/sh", "-c", "sleep 0.$RANK; echo done");
        Assert.Equal(0, code);
        Assert.Empty(stderr);
        Assert.Equal(["[rank 0] done", "[rank 1] done"], stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task Launch_RankFails_StopsOtherTreesQuicklyAndReturnsItsCode()
    {
        // Rank 0 is the sleeper itself, rank 2 a shell whose child sleeps: both trees must go.
        var script = $"""
            case $RANK in
              0) {WritePid()}; exec sleep 30 ;;
              1) {AwaitPids(0, 2)}; echo "failing" >&2; exit 3 ;;
              2) sleep 30 & {WritePid("$!")}; wait ;;
            esac
            """;
        var clock = Stopwatch.StartNew();
        var (code, _, stderr) = await Run("launch", "--nproc", "3", "--", "/bin/sh", "-c", script);
        Assert.Equal(3, code);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        Assert.Contains("[rank 1] failing", stderr);
        Assert.Matches(@"launch: rank 1 \(pid \d+\) exited with code 3; stopping ranks 0, 2", stderr);
        Assert.True(stderr.IndexOf("[rank 1] failing", StringComparison.Ordinal) < stderr.IndexOf("exited with code 3", StringComparison.Ordinal), stderr);
        await AssertGone(Pid(0));
        await AssertGone(Pid(2));
    }

    [Fact]
    public async Task Run_RankIgnoresSigterm_IsKilledAfterGrace()
    {
        var options = new LaunchOptions
        {
            NProc = 2,
            Command = ["/bin/sh", "-c", $"case $RANK in 0) trap '' TERM; {WritePid()}; while :; do sleep 0.05; done ;; 1) {AwaitPids(0)}; exit 5 ;; esac"],
            StopGrace = TimeSpan.FromMilliseconds(300),
        };
        var stderr = new StringWriter();
        var clock = Stopwatch.StartNew();
        var code = await Launcher.RunAsync(options, TextWriter.Null, stderr, Ct).WaitAsync(Deadline, Ct);
        Assert.Equal(5, code);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        Assert.Contains("after SIGTERM; killing them", stderr.ToString());
        await AssertGone(Pid(0));
    }

    [Fact]
    public async Task Run_Cancelled_StopsEveryRankAndThrows()
    {
        var options = new LaunchOptions { NProc = 2, Command = ["/bin/sh", "-c", $"{WritePid()}; exec sleep 30"] };
        using var cts = new CancellationTokenSource();
        var stderr = new StringWriter();
        var run = Launcher.RunAsync(options, TextWriter.Null, stderr, cts.Token);
        var deadline = Stopwatch.StartNew();
        while (!(File.Exists(Path.Combine(_dir, "0")) && File.Exists(Path.Combine(_dir, "1"))) && deadline.Elapsed < Deadline)
        {
            await Task.Delay(20, Ct);
        }
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(Deadline, Ct));
        Assert.Contains("launch: interrupted; stopping ranks 0, 1", stderr.ToString());
        await AssertGone(Pid(0));
        await AssertGone(Pid(1));
    }

    [Fact]
    public async Task Run_EnvironmentTokenAndPerRankVariables_ReachTheRanks()
    {
        var options = new LaunchOptions
        {
            NProc = 2,
            MasterPort = 29511,
            Command = ["/bin/sh", "-c", "echo \"$SHARED $MINE $CKPT_ENGINE_TOKEN ${HOME-unset} $RANK\""],
            Environment = new Dictionary<string, string?> { ["SHARED"] = "s", ["HOME"] = null },
            RankEnvironment = r => new Dictionary<string, string?> { ["MINE"] = $"m{r}" },
            Token = "secret",
        };
        var stdout = new StringWriter();
        var code = await Launcher.RunAsync(options, stdout, TextWriter.Null, Ct).WaitAsync(Deadline, Ct);
        Assert.Equal(0, code);
        var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("[rank 0] s m0 secret unset 0", lines);
        Assert.Contains("[rank 1] s m1 secret unset 1", lines);
    }

    [Fact]
    public async Task Run_MissingProgram_ReturnsCannotStart()
    {
        var options = new LaunchOptions { NProc = 2, Command = [Path.Combine(_dir, "nope")] };
        var stderr = new StringWriter();
        var code = await Launcher.RunAsync(options, TextWriter.Null, stderr, Ct).WaitAsync(Deadline, Ct);
        Assert.Equal(Launcher.CannotStart, code);
        Assert.Contains("cannot start rank 0", stderr.ToString());
    }

    [Fact]
    public async Task Run_BadOptions_ThrowArgumentException()
    {
        await Assert.ThrowsAsync<CheckpointEngineException>(() => Launcher.RunAsync(new LaunchOptions { NProc = 0, Command = ["true"] }, TextWriter.Null, TextWriter.Null, Ct));
        await Assert.ThrowsAsync<CheckpointEngineException>(() => Launcher.RunAsync(new LaunchOptions { Command = [] }, TextWriter.Null, TextWriter.Null, Ct));
        await Assert.ThrowsAsync<CheckpointEngineException>(() => Launcher.RunAsync(new LaunchOptions { MasterPort = 65536, Command = ["true"] }, TextWriter.Null, TextWriter.Null, Ct));
    }

    [Theory]
    [InlineData("launch needs a command after --", "--nproc", "2")]
    [InlineData("launch needs a command after --", "--nproc", "2", "--")]
    [InlineData("--nproc must be in [1, 4096]", "--nproc", "0", "--", "true")]
    [InlineData("Option '--nproc' is required", "--", "true")]
    [InlineData("--master-port must be in [1, 65535]", "--nproc", "1", "--master-port", "0", "--", "true")]
    [InlineData("--master-port must be in [1, 65535]", "--nproc", "1", "--master-port", "65536", "--", "true")]
    [InlineData("--master-addr must be a host name or an IP address", "--nproc", "1", "--master-addr", " ", "--", "true")]
    public async Task Launch_BadFlags_AreUsageErrors(string message, params string[] args)
    {
        var (code, _, stderr) = await Run(["launch", .. args]);
        Assert.NotEqual(0, code);
        Assert.Contains(message, stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Launch_UnknownCommand_NamesItAndStartsNothing()
    {
        var (code, stdout, stderr) = await Run("launch", "--nproc", "2", "--", "inspct", "x");
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Empty(stdout);
        Assert.Contains("error: 'inspct' is neither a ckpt-engine command (", stderr, StringComparison.Ordinal);
        Assert.Contains("inspect, launch, ", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void ResolveCommand_PathSubcommandOrProgramOnPath()
    {
        var subcommands = new HashSet<string> { "inspect", "worker" };
        Assert.True(LaunchCommand.TryResolveCommand(["sh", "-c", "x"], subcommands, out var sh, out _));
        Assert.True(Path.IsPathRooted(sh[0]) && sh[0].EndsWith("/sh", StringComparison.Ordinal), sh[0]);
        Assert.Equal(["-c", "x"], sh.Skip(1));
        Assert.True(LaunchCommand.TryResolveCommand(["inspect", "dir"], subcommands, out var self, out _));
        Assert.Equal(["inspect", "dir"], self.TakeLast(2));
        Assert.Equal(Environment.ProcessPath, self[0]);
        Assert.True(LaunchCommand.TryResolveCommand(["/bin/sh"], subcommands, out var abs, out _));
        Assert.Equal(["/bin/sh"], abs);
        var script = Path.Combine(_dir, "run.sh");
        File.WriteAllText(script, "#!/bin/sh\n");
        Assert.False(LaunchCommand.TryResolveCommand([script], subcommands, out _, out var why));
        Assert.Contains("is not executable", why);
        Assert.False(LaunchCommand.TryResolveCommand([Path.Combine(_dir, "nope")], subcommands, out _, out why));
        Assert.Contains("no such file", why);
    }

    [Fact]
    public void ResolveToken_InheritsRequiresOrGenerates()
    {
        Assert.True(LaunchCommand.TryResolveToken(fromEnv: true, "abc", out var token, out _));
        Assert.Null(token); // Inherited as is.
        Assert.False(LaunchCommand.TryResolveToken(fromEnv: true, null, out _, out var why));
        Assert.Equal("--token-from-env: CKPT_ENGINE_TOKEN is not set", why);
        Assert.True(LaunchCommand.TryResolveToken(fromEnv: false, "abc", out token, out _));
        Assert.Null(token);
        Assert.True(LaunchCommand.TryResolveToken(fromEnv: false, " ", out token, out _));
        Assert.Matches("^[0-9a-f]{64}$", token);
    }

    /// <summary>Through the script users run: a real ckpt-engine subcommand on two ranks.</summary>
    [Fact]
    public async Task Script_LaunchInspect_BothRanksPrefixed()
    {
        var sample = Path.Combine(_dir, "ckpt");
        var (code, _, err) = await Run("sample", sample, "--size-mb", "1", "--shards", "2");
        Assert.True(code == 0, err);
        var result = await CkptEngineScript.RunAsync("launch", "--nproc", "2", "--", "inspect", sample);
        Assert.True(result.Code == 0, result.Err);
        var lines = result.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.All(lines, l => Assert.Matches(@"^\[rank [01]\] ", l));
        Assert.Contains("[rank 0] total: 2 files", result.Out);
        Assert.Contains("[rank 1] total: 2 files", result.Out);
        Assert.Contains(lines, l => l.StartsWith("[rank 1] ", StringComparison.Ordinal) && l.Contains("model.layers.1.mlp.up_proj.weight", StringComparison.Ordinal));
    }

    /// <summary>SIGTERM to the launcher stops its ranks and exits 128 + 15.</summary>
    [Fact]
    public async Task Script_Sigterm_StopsRanksAndExitsNonZero()
    {
        var result = await CkptEngineScript.RunAsync(
            async launcher =>
            {
                var deadline = Stopwatch.StartNew();
                while (!(File.Exists(Path.Combine(_dir, "0")) && File.Exists(Path.Combine(_dir, "1"))) && deadline.Elapsed < Deadline)
                {
                    await Task.Delay(20, Ct);
                }
                using var kill = Process.Start("kill", ["-TERM", launcher.Id.ToString(CultureInfo.InvariantCulture)]);
                await kill.WaitForExitAsync(Ct);
            },
            "launch", "--nproc", "2", "--", "/bin/sh", "-c", $"{WritePid()}; exec sleep 30");
        Assert.Equal(143, result.Code);
        Assert.Contains("launch: interrupted; stopping ranks 0, 1", result.Err);
        await AssertGone(Pid(0));
        await AssertGone(Pid(1));
    }

    [GeneratedRegex(@"^\[rank ([0-3])\] out \1 \d+ 0{100}$")]
    private static partial Regex OutLine();

    [GeneratedRegex(@"^\[rank ([0-3])\] err \1 \d+$")]
    private static partial Regex ErrLine();
}

/// <summary>A rank whose device's worker socket is taken exits with one line saying so and how to choose another id.</summary>
public sealed class WorkerSocketTakenTests
{
    [Fact]
    public async Task Serve_DeviceSocketHeldByAnotherProcess_ExitsWithOneLineNamingTheVariable()
    {
        var id = "taken-" + Guid.NewGuid().ToString("N")[..12];
        using var squatter = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        squatter.Bind(CheckpointEngine.Worker.WorkerSockets.EndPoint(CheckpointEngine.Worker.WorkerSockets.AddressFor(id)));
        squatter.Listen(1);

        var (code, _, err) = await CkptEngineScript.RunAsync(new Dictionary<string, string>
        {
            ["CKPT_ENGINE_DEVICE_ID"] = id, ["RANK"] = "0", ["WORLD_SIZE"] = "1", ["MASTER_ADDR"] = "127.0.0.1", ["MASTER_PORT"] = "0",
        }, null, "serve", "--listen", "127.0.0.1:0", "--device", "host");

        Assert.Equal(1, code);
        var line = Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"error: cannot listen for the worker of device '{id}' on @ckpt-engine-{id}: ", line, StringComparison.Ordinal);
        Assert.EndsWith("choose another device id with CKPT_ENGINE_DEVICE_ID (e.g. 'host-{local_rank}-b') for this world and its workers", line, StringComparison.Ordinal);
    }
}
