using CheckpointEngine.Worker;
using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;

/// <summary>
/// Elastic join. "p2p-owner DIR URLS TP METAS": register a share, gather metas, broadcast-update the own
/// workers, save the metas (rank 0), then keep serving P2P reads until METAS.done appears.
/// "p2p-join URLS TP METAS [STARTED]": register nothing, load the metas, and P2P-update the own workers from the owners;
/// with STARTED, each rank creates the file STARTED.RANK when its update triggers its worker (the reads follow at once);
/// TEST_UPDATES of them (default 1), each printing "update U ok BYTES SECONDS BUCKETS over TRANSPORT", "network U BYTES_FROM_OTHER_HOSTS RELAYED_BUCKETS" and
/// "stages U setup S read S broadcast S reload S total S".
/// </summary>
internal static class P2PScenario
{
    public static async Task Owner(World world, TimeSpan timeout, string[] args)
    {
        var (dir, urls, tp, metasPath) = (args[0], args[1].Split(','), int.Parse(args[2], CultureInfo.InvariantCulture), args[3]);
        await using var ps = await Start(world);
        using (var checkpoint = Checkpoint.Open(dir))
        {
            ps.RegisterCheckpoint("ckpt", CheckpointSplit.ByTensor(checkpoint, world.Rank, world.Size));
        }
        var metas = await ps.GatherMetasAsync("ckpt", timeout);
        var report = await ps.UpdateAsync("ckpt", UpdateMode.Broadcast, EngineTrigger.Http(urls[world.Rank / tp], tp), new UpdateOptions { Timeout = timeout });
        Console.WriteLine($"update 1 ok {report.BytesDelivered}");
        if (world.Rank == 0)
        {
            metas.Save(metasPath);
        }
        Console.WriteLine("serving");
        var clock = Stopwatch.StartNew();
        while (!File.Exists(metasPath + ".done") && clock.Elapsed < TimeSpan.FromSeconds(120))
        {
            await Task.Delay(50);
        }
        await world.Group.BarrierAsync(timeout);
    }

    public static async Task Join(World world, TimeSpan timeout, string[] args)
    {
        var (urls, tp, metasPath) = (args[0].Split(','), int.Parse(args[1], CultureInfo.InvariantCulture), args[2]);
        await using var ps = await Start(world);
        ps.SetMetas(GlobalMetas.Load(metasPath));
        var trigger = EngineTrigger.Http(urls[world.Rank / tp], tp);
        if (args.Length > 3)
        {
            var (inner, started) = (trigger, $"{args[3]}.{world.Rank}");
            trigger = async (context, ct) =>
            {
                await File.WriteAllTextAsync(started, "", ct);
                await inner(context, ct);
            };
        }
        // TEST_UPDATES: the first update is a cold start (connections, buffers, the worker's first attach); later ones show the steady state.
        var updates = int.Parse(Environment.GetEnvironmentVariable("TEST_UPDATES") ?? "1", CultureInfo.InvariantCulture);
        for (var u = 1; u <= updates; u++)
        {
            var clock = Stopwatch.StartNew();
            try
            {
                var report = await ps.UpdateAsync("ckpt", UpdateMode.P2P(Enumerable.Range(0, world.Size)), trigger,
                    options: new UpdateOptions { Timeout = timeout });
                Console.WriteLine($"update {u} ok {report.BytesDelivered} {clock.Elapsed.TotalSeconds:F3} {report.Buckets.Count} over {report.P2PTransport}");
                Console.WriteLine($"path {u} {(report.InPlace ? "in-place" : report.ReadInStaging ? "in-staging" : "staged")}");
                Console.WriteLine($"network {u} {report.NetworkBytesReceived} {report.RelayedBuckets}");
                // Where the time went: before the first bucket (setup), and each stage summed over buckets on this rank.
                var setup = report.Buckets.Count == 0 ? report.Duration : report.Buckets.Min(b => b.HostToDeviceEnd > TimeSpan.Zero ? b.HostToDeviceStart : b.BroadcastStart);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"stages {u} setup {setup.TotalSeconds:F3} read {report.HostToDevice.TotalSeconds:F3} broadcast {report.Broadcast.TotalSeconds:F3} reload {report.Reload.TotalSeconds:F3} total {report.Duration.TotalSeconds:F3}"));
            }
            catch (UpdateFailedException e)
            {
                Console.WriteLine($"update {u} failed {clock.Elapsed.TotalSeconds:F3} {e.Message}");
            }
        }
    }

    private static Task<ParameterServer> Start(World world)
    {
        var device = new HostDevice(world.Config.HostDeviceId, freeMemory: 64L << 20);
        return Task.FromResult(new ParameterServer(world, device));
    }
}
