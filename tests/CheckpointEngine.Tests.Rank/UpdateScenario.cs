using CheckpointEngine.Worker;
using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Hosting.Tracing;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;

/// <summary>
/// A parameter-server rank: registers its share of a checkpoint directory, gathers metas, and
/// updates the reference worker(s) <c>updates</c> times, re-registering between updates like an RL
/// loop. Arguments: DIR ENGINE_URLS TP UPDATES [kill-at-bucket R K [U]] (rank R dies around bucket K of update U, default 1), where ENGINE_URLS has one URL per
/// inference group (comma-separated; group g = ranks g·TP … g·TP+TP−1).
/// Prints "update N ok BYTES SECONDS BUCKETS SLOTS", "network N BYTES_FROM_OTHER_HOSTS RELAYED_BUCKETS",
/// "declarations N BYTES_OF_WANTS_RECEIVED", "path N in-place|in-staging|staged BYTES_STAGED", "gathered N BYTES_GATHERED_INTO_SLOTS" and "link N sent|received PEER_HOST BYTES SECONDS"
/// per peer host per update, "received N BYTES_INTO_THE_DEVICE SCATTERED_BUCKETS" (counted by NCCL groups), "overlap N BUCKETS_MOVED_BEFORE_THE_LAST_ENDED IN_FLIGHT",
/// or "update N failed MESSAGE" and goes on.
/// TEST_CLASS_RELAYS=on|off sets UpdateOptions.ClassRelays (unset: auto), TEST_BUCKETS_IN_FLIGHT=N UpdateOptions.BucketsInFlight. With TEST_DEVICE=cuda the rank runs the CUDA backend (device LOCAL_RANK, NCCL; in tests the stand-ins). With TEST_TRACE_FILE, rank 0 writes each update's trace there
/// (the update's number before the extension).
/// </summary>
internal static class UpdateScenario
{
    public static async Task Run(World world, TimeSpan timeout, string[] args)
    {
        var (dir, urls, tp, updates) = (args[0], args[1].Split(','), int.Parse(args[2], CultureInfo.InvariantCulture), int.Parse(args[3], CultureInfo.InvariantCulture));
        var url = urls[world.Rank / tp];
        var kill = args.Length > 6 && args[4] == "kill-at-bucket"
            ? (Rank: int.Parse(args[5], CultureInfo.InvariantCulture), Bucket: int.Parse(args[6], CultureInfo.InvariantCulture), Update: args.Length > 7 ? int.Parse(args[7], CultureInfo.InvariantCulture) : 1)
            : ((int Rank, int Bucket, int Update)?)null;
        var tracePath = Environment.GetEnvironmentVariable("TEST_TRACE_FILE");
        var deviceMemory = long.Parse(Environment.GetEnvironmentVariable("TEST_DEVICE_MEMORY_MB") ?? "64", CultureInfo.InvariantCulture) << 20;
        using var backend = Environment.GetEnvironmentVariable("TEST_DEVICE") == "cuda" ? await Backend.CreateAsync(world, DeviceKind.Cuda, timeout) : null;
        using var host = backend is null ? new HostDevice(world.Config.HostDeviceId, freeMemory: deviceMemory, localRanks: world.Config.LocalWorldSize) : null;
        await using var ps = new ParameterServer(world, backend?.Device ?? host!, group: backend?.Group);
        var relays = Environment.GetEnvironmentVariable("TEST_CLASS_RELAYS") switch { "on" => true, "off" => false, _ => (bool?)null };
        var inFlight = Environment.GetEnvironmentVariable("TEST_BUCKETS_IN_FLIGHT") is { Length: > 0 } n ? int.Parse(n, CultureInfo.InvariantCulture) : (int?)null;
        var options = new UpdateOptions { Timeout = timeout, ClassRelays = relays, BucketsInFlight = inFlight };
        for (var u = 1; u <= updates; u++)
        {
            using (var checkpoint = Checkpoint.Open(dir))
            {
                var share = CheckpointSplit.ByTensor(checkpoint, world.Rank, world.Size);
                var registered = ps.RegisterCheckpoint("ckpt", share, options: new RegisterOptions { UsePool = true });
                Console.WriteLine($"registered {u} {registered.TensorCount} {registered.PoolReuses}");
            }
            await ps.GatherMetasAsync("ckpt", timeout);
            var trigger = EngineTrigger.Http(url, tp);
            if (kill is { } k && k.Rank == world.Rank && k.Update == u)
            {
                // Dies without a word once the update is under way (the test's worker is slow per bucket).
                var inner = trigger;
                trigger = async (context, ct) =>
                {
                    _ = Task.Run(async () =>
                    {
                        await Task.Delay(TimeSpan.FromMilliseconds(100 * (k.Bucket + 1)), CancellationToken.None);
                        Environment.Exit(137);
                    }, CancellationToken.None);
                    await inner(context, ct);
                };
            }
            var clock = Stopwatch.StartNew();
            try
            {
                var report = await ps.UpdateAsync("ckpt", UpdateMode.Broadcast, trigger, options);
                var finished = DateTimeOffset.UtcNow; // Lines the ranks up in a trace: taken before anything else is done.
                Console.WriteLine($"update {u} ok {report.BytesDelivered} {clock.Elapsed.TotalSeconds:F3} {report.Buckets.Count} {report.Slots}");
                Console.WriteLine($"network {u} {report.NetworkBytesReceived} {report.RelayedBuckets}");
                Console.WriteLine($"declarations {u} {report.DeclarationBytes}");
                Console.WriteLine($"path {u} {(report.InPlace ? "in-place" : report.ReadInStaging ? "in-staging" : "staged")} {report.BytesStaged}");
                Console.WriteLine($"gathered {u} {report.BytesGathered}");
                Console.WriteLine($"received {u} {report.BytesReceived} {report.ScatteredBuckets}");
                // Buckets whose move began before the one before it had ended (several in flight).
                Console.WriteLine($"overlap {u} {report.Buckets.Zip(report.Buckets.Skip(1)).Count(p => p.Second.BroadcastStart < p.First.BroadcastEnd)} {report.BucketsInFlight}");
                foreach (var l in report.LinkTotals())
                {
                    Console.WriteLine($"link {u} {(l.Sent ? "sent" : "received")} {l.PeerHost} {l.Bytes} {l.Busy.TotalSeconds:F6}");
                }
                if (tracePath is not null)
                {
                    var trace = await UpdateTrace.GatherAsync(world.Group, "ckpt", "broadcast", report, finished, timeout, CancellationToken.None);
                    if (world.Rank == 0)
                    {
                        ChromeTraceWriter.WriteFile(trace, UpdateTrace.PathFor(tracePath, u.ToString(CultureInfo.InvariantCulture)));
                    }
                }
            }
            catch (UpdateFailedException e)
            {
                Console.WriteLine($"update {u} failed {clock.Elapsed.TotalSeconds:F3} {e.Message}");
                if (e.InnerException is CheckpointEngine.Runtime.Collectives.CollectiveException)
                {
                    throw; // A dead rank: this world is over.
                }
            }
            await ps.UnregisterCheckpointAsync("ckpt");
        }
    }
}
