using System.Diagnostics;
using System.Text.Json;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Gpu;

/// <summary>
/// The CUDA backend end to end without a GPU: the rank processes load stand-ins for the CUDA driver and NCCL
/// (Fake/*.c, built here with the C compiler) through <c>CKPT_ENGINE_CUDA_LIBRARY</c> and <c>CKPT_ENGINE_NCCL_LIBRARY</c>.
/// Device memory is shared memory, so everything but the GPU runs for real: the driver calls and their
/// signatures, contexts per thread, page-locking, the IPC handles a worker in another process opens, NCCL's
/// unique id through the store and its non-blocking init, broadcasts and all-reduces between processes.
/// Timing and hardware faults are left to the GPU check.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class FakeGpuTests : IDisposable
{
    private readonly HashSet<string> _before = [.. FakeGpu.Leftovers()];

    public void Dispose() => FakeGpu.RemoveLeftovers(_before);

    [Fact]
    public async Task Demo_OnCudaDevices_BroadcastAndP2PVerified_NoMemoryLeftBehind()
    {
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(FakeGpu.Environment(2), null,
            "demo", "--device", "cuda", "--ranks", "2", "--size", "8MiB", "--json");
        Assert.True(code == 0, stderr + stdout);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(["broadcast", "p2p"], lines.Select(l => l.GetProperty("method").GetString()));
        Assert.All(lines, l => Assert.True(l.GetProperty("verified").GetBoolean()));
        Assert.Empty(FakeGpu.Leftovers().Except(_before)); // Every allocation, IPC mapping and collective cleaned up after itself.
    }

    /// <summary>
    /// Shard-aware on CUDA devices: from the second update each rank cuts its shard's slices out of every broadcast on the device
    /// (column slices as strided copies; row by row where the driver refuses the pitches) and the workers, through CUDA IPC, load
    /// only those; the slices put back together are the checkpoint's, and each rank delivered less than the whole.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Demo_OnCudaDevices_ShardAware_EachShardHoldsItsSlices(bool refuse2D)
    {
        var env = FakeGpu.Environment(2);
        if (refuse2D)
        {
            env["FAKE_CUDA_REFUSE_2D"] = "1";
        }
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(env, null,
            "demo", "--device", "cuda", "--ranks", "2", "--size", "8MiB", "--method", "broadcast", "--shard-by-tp", "--json");
        Assert.True(code == 0, stderr + stdout);
        var line = JsonDocument.Parse(stdout.Trim()).RootElement;
        Assert.True(line.GetProperty("verified").GetBoolean());
        // The reported (second) update: each worker received its slices and the tensors it keeps whole, about half of the 8 MiB.
        Assert.InRange(line.GetProperty("bytes").GetInt64(), 1L << 20, 6L << 20);
        Assert.Empty(FakeGpu.Leftovers().Except(_before));
    }

    [Fact]
    public async Task Demo_DeviceCopyFails_EveryRankFailsWithTheCudaErrorAtOnce()
    {
        // Every bucket copy to the device faults (the stand-in spares the all-reduce's small copies): the owner still
        // broadcasts (stale bytes) so that nobody waits for it, and reports the fault in the next agreement; the others
        // raise it too instead of waiting for their deadline.
        var env = FakeGpu.Environment(2);
        env["FAKE_CUDA_FAIL_HTOD_AFTER"] = "0";
        var (code, stdout, stderr) = await CkptEngineScript.RunAsync(env, null, "demo", "--device", "cuda", "--ranks", "2", "--size", "8MiB", "--method", "broadcast");
        Assert.Equal(1, code);
        // The agreed form (a peer waiting in the broadcast would instead report NCCL's timeout, after a minute).
        Assert.Matches(@"\[rank \d\] error: rank 0 failed at reloading bucket 0: copying bucket 0 to its device failed: cuMemcpyHtoDAsync failed: CUDA_ERROR_ILLEGAL_ADDRESS \(700\)",
            stdout + stderr);
    }

    [Fact]
    public async Task Demo_MoreRanksThanGpus_FailsNamingTheCount()
    {
        var (code, _, stderr) = await CkptEngineScript.RunAsync(FakeGpu.Environment(1), null, "demo", "--device", "cuda", "--ranks", "2", "--size", "4MiB");
        Assert.Equal(1, code);
        Assert.Contains("error: 2 ranks need 2 GPUs with --device cuda; this machine shows 1", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("hang")]
    [InlineData("die")]
    public async Task NcclPeerStopsTakingPart_TheOtherRankFailsInsteadOfHanging(string mode)
    {
        // Rank 0 waits in an NCCL broadcast from rank 1, which hangs or dies after a first good broadcast. The
        // stand-in NCCL would wait 120 s: the communicator's own deadline (3 s) or the store's news of the death
        // must end it first, abort the NCCL communicator and fail the call.
        var env = FakeGpu.Environment(2);
        env["FAKE_NCCL_TIMEOUT_S"] = "120";
        env["TEST_TIMEOUT_S"] = mode == "hang" ? "3" : "60";
        env["CKPT_ENGINE_CONNECT_TIMEOUT_S"] = "10";
        var results = await RankCluster.RunAsync(2, ["nccl", mode], r => new Dictionary<string, string>(env) { ["LOCAL_RANK"] = r.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            waitFor: r => r == 0 || mode == "die", deadline: TimeSpan.FromSeconds(90));
        var survivor = results[0];
        Assert.Equal("broadcast equal", survivor.Line("broadcast"));
        Assert.True(survivor.ExitCode == 3, survivor.Output);
        var error = survivor.Line("error");
        Assert.Contains("broadcast of 1048576 bytes from rank 1", error, StringComparison.Ordinal);
        Assert.Contains(mode == "hang" ? "did not complete within the 3.0 s deadline" : "rank 1", error, StringComparison.Ordinal);
        var seconds = double.Parse(survivor.Line("failed-after").Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(seconds, mode == "hang" ? 2.9 : 0, 20);
        if (mode == "die")
        {
            Assert.Equal(137, results[1].ExitCode);
        }
    }

    /// <summary>
    /// NCCL operations are submitted in the order they were called on a device, over all its communicators: a broadcast called after one
    /// that waits for its group's previous broadcast is not submitted before it (see <c>NcclScenario.Order</c>), so one order fits both ranks'.
    /// </summary>
    [Fact]
    public async Task Nccl_SubmitsInCallOrderAcrossCommunicators()
    {
        var order = Directory.CreateTempSubdirectory("ckpt-nccl-order-").FullName;
        try
        {
            var env = FakeGpu.Environment(2);
            env["FAKE_NCCL_ORDER_DIR"] = order;
            var results = await RankCluster.RunAsync(2, ["nccl-order"], r => new Dictionary<string, string>(env) { ["LOCAL_RANK"] = r.ToString(System.Globalization.CultureInfo.InvariantCulture) },
                deadline: TimeSpan.FromSeconds(90));
            Assert.All(results, r => Assert.True(r.ExitCode == 0 && r.Line("order") == "order done", $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}"));
            var logs = Directory.GetFiles(order, "*.log").Select(File.ReadAllLines).ToList();
            Assert.Equal(2, logs.Count);
            Assert.All(logs, l => Assert.Equal(3, l.Length)); // a1, a2, b1 (group creation submits nothing).
            var cycle = FakeGpu.SubmissionCycle(order);
            Assert.True(cycle is null, $"the ranks submitted in orders no one order fits: {cycle}\n{string.Join("\n--\n", logs.Select(l => string.Join("\n", l)))}");
        }
        finally
        {
            Directory.Delete(order, true);
        }
    }

    [Fact]
    public async Task GpuTraitTests_PassOnTheStandIns()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        // The GPU-trait tests live in the unit-test project (built before this one); run them against the stand-ins.
        var unitTests = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "CheckpointEngine.Tests", Path.GetFileName(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)), "CheckpointEngine.Tests.dll"));
        Assert.True(File.Exists(unitTests), $"the unit-test project's build is missing: {unitTests}");
        foreach (var a in new[] { unitTests, "-trait", "Category=GPU", "-noColor" })
        {
            psi.ArgumentList.Add(a);
        }
        foreach (var (k, v) in FakeGpu.Environment(1))
        {
            psi.Environment[k] = v;
        }
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var errors = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        await p.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromMinutes(2), TestContext.Current.CancellationToken);
        var text = await output + await errors;
        Assert.True(p.ExitCode == 0, text);
        Assert.Contains("Total: 5, Errors: 0, Failed: 0, Skipped: 0", text, StringComparison.Ordinal);
    }
}
