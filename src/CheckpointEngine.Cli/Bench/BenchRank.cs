using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// One rank of a bench configuration (the hidden <c>bench rank</c> command): the flow of <c>update</c>
/// (join, register this rank's share with pooled buffers, gather metas, wait for the engine, update through the engine's
/// HTTP trigger), but <c>updates</c> times in one process. <c>update</c> does one update per launch,
/// and the first update of a process pays for JIT and first-touch of its buffers (ten times the
/// steady state on a small machine), which is not what the RL loop's repeated updates see.
/// Prints <c>update</c>'s machine line per update, with <c>update=K</c> added.
/// </summary>
internal static class BenchRank
{
    public const string CheckpointName = "checkpoint";

    /// <summary>An owner of <c>p2p-join</c>: registers, gathers and saves the metas, and serves P2P reads until the runner says stop.</summary>
    public const string OwnerRole = "owner";

    /// <summary>A joiner of <c>p2p-join</c>: loads the owners' metas (as <c>update --load-metas-file</c>) and updates over P2P.</summary>
    public const string JoinerRole = "joiner";

    /// <param name="tracePath">Rank 0 writes the last update's trace (every rank's bucket timings) here.</param>
    /// <param name="role">Null: owns a share and updates (every method but <c>p2p-join</c>); else <see cref="OwnerRole"/> or <see cref="JoinerRole"/>.</param>
    /// <param name="metasPath">The owners' metas: rank 0 of the owners writes them (whole, then renamed), the joiners load them.</param>
    /// <param name="stopPath">Owners serve until this file exists (or <paramref name="timeout"/> passes).</param>
    public static async Task<int> RunAsync(string path, string endpoint, int groupSize, string method, int updates, TimeSpan timeout, string? tracePath,
        TextWriter stdout, CancellationToken ct, string? role = null, string? metasPath = null, string? stopPath = null, bool prepare = false)
    {
        await using var rank = await RankHost.StartAsync(RankConfig.FromEnvironment(), timeout: timeout, ct: ct).ConfigureAwait(false); // The runner sets the backend's variable.
        var (world, ps) = (rank.World, rank.Server);
        if (role == JoinerRole)
        {
            ps.SetMetas(GlobalMetas.Load(metasPath!)); // Allocates and faults in the device buffers, as a joiner does before its first update.
        }
        else
        {
            using (var checkpoint = Checkpoint.Open(path))
            {
                ps.RegisterCheckpoint(CheckpointName, CheckpointSplit.ByTensor(checkpoint, world.Rank, world.Size), options: new RegisterOptions { UsePool = true });
            }
            var metas = await ps.GatherMetasAsync(CheckpointName, timeout, ct).ConfigureAwait(false);
            if (role == OwnerRole)
            {
                await ServeAsync(world, metas, metasPath!, stopPath!, timeout, ct).ConfigureAwait(false);
                return 0;
            }
        }
        await Hosting.EngineProbe.WaitAsync(endpoint, null, null, Hosting.EngineApi.Vllm, timeout, ct).ConfigureAwait(false); // As update waits for its engine.
        var trigger = Hosting.EngineTrigger.Http(endpoint, groupSize);
        var options = new UpdateOptions { Timeout = timeout, Verify = method == BenchSettings.Verify }; // A verified broadcast.
        var mode = BenchSettings.IsP2P(method, out _) ? UpdateMode.P2P(Enumerable.Range(0, world.Size)) : UpdateMode.Broadcast;
        if (prepare)
        {
            await world.Group.BarrierAsync(timeout, ct).ConfigureAwait(false);
            var p = await ps.PrepareAsync(CheckpointName, mode, trigger, options, ct).ConfigureAwait(false);
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"result method={method} bytes=0 seconds={p.Duration.TotalSeconds:F6} buckets=0 prepare=1"));
        }
        for (var k = 0; k < updates; k++)
        {
            await world.Group.BarrierAsync(timeout, ct).ConfigureAwait(false); // Every update starts with every rank ready.
            var r = await ps.UpdateAsync(CheckpointName, mode, trigger, options, ct).ConfigureAwait(false);
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"result method={method} bytes={r.BytesDelivered} seconds={r.Duration.TotalSeconds:F6} buckets={r.Buckets.Count} stage={r.HostToDevice.TotalSeconds:F6} broadcast={r.Broadcast.TotalSeconds:F6} reload={r.Reload.TotalSeconds:F6} network={r.NetworkBytesReceived} update={k}{(r.P2PTransport is { } t ? $" transport={t}" : "")}"));
            stdout.Flush();
            if (tracePath is not null && k == updates - 1)
            {
                var trace = await Hosting.Tracing.UpdateTrace.GatherAsync(world.Group, CheckpointName, method, r, DateTimeOffset.UtcNow, timeout, ct).ConfigureAwait(false);
                if (world.Rank == 0)
                {
                    Hosting.Tracing.ChromeTraceWriter.WriteFile(trace, tracePath);
                    stdout.WriteLine($"wrote trace {tracePath}");
                }
            }
        }
        await world.Group.BarrierAsync(timeout, ct).ConfigureAwait(false); // Owners leave together: nobody is mid-read.
        return 0;
    }

    private static async Task ServeAsync(World world, GlobalMetas metas, string metasPath, string stopPath, TimeSpan timeout, CancellationToken ct)
    {
        if (world.Rank == 0)
        {
            var partial = metasPath + ".partial";
            metas.Save(partial);
            File.Move(partial, metasPath, overwrite: true); // The joiners never read half a file.
        }
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!File.Exists(stopPath) && clock.Elapsed < timeout)
        {
            await Task.Delay(50, ct).ConfigureAwait(false); // The runner's signal comes through the file system: no socket of its own to secure.
        }
        await world.Group.BarrierAsync(timeout, ct).ConfigureAwait(false); // Owners leave together: nobody is mid-read.
    }
}
