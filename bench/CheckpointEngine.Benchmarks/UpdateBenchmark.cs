using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Hosting.Worker;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;

namespace CheckpointEngine.Benchmarks;

/// <summary>
/// A whole broadcast update on this host: parameter-server ranks as processes, one reference worker
/// with a shard per rank (every shard keeps every tensor). Reports per-worker delivered throughput
/// (bytes each worker reloaded ÷ update wall time) against single-thread memcpy measured in the same
/// run, and where the time went per stage (stages overlap, so they sum to more than the wall time).
/// </summary>
public static class UpdateBenchmark
{
    public static async Task<int> Run(string[] args)
    {
        var sizeGb = double.Parse(Baselines.Option(args, "--size-gb") ?? "2", CultureInfo.InvariantCulture);
        var ranks = int.Parse(Baselines.Option(args, "--ranks") ?? "2", CultureInfo.InvariantCulture);
        var bucketMb = int.Parse(Baselines.Option(args, "--bucket-mb") ?? "256", CultureInfo.InvariantCulture);
        var root = Path.Combine(Path.GetTempPath(), $"ckpt-bench-update-{Environment.ProcessId}");
        try
        {
            Console.WriteLine($"writing a {sizeGb:F1} GiB sample checkpoint ...");
            var files = SampleCheckpoint.Write(root, (long)(sizeGb * (1L << 30)), shards: 8, layers: 16);
            var bytes = files.Sum(f => new FileInfo(f).Length);
            var memcpy = Baselines.Memcpy(bytes);
            var ids = Enumerable.Range(0, ranks).Select(r => $"bench-{Environment.ProcessId}-{r}").ToList();
            await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions { TensorParallel = ranks, DeviceIds = ids });
            var lines = RunRanks(ranks, root, worker.Address.ToString(), ids, bucketMb);
            var best = lines.Select(l => l.Split(' ')).GroupBy(p => p[1]).Select(g => g.MinBy(p => double.Parse(p[3], CultureInfo.InvariantCulture))!).ToList();
            var wall = best.Max(p => double.Parse(p[3], CultureInfo.InvariantCulture));
            var delivered = long.Parse(best[0][2], CultureInfo.InvariantCulture);
            double Gbps(double s, long n) => n / s / 1e9;
            Console.WriteLine($"update of {delivered} bytes to {ranks} workers; {Environment.ProcessorCount} cores; buckets of {bucketMb} MiB; best of 3 after a warm-up");
            Console.WriteLine($"{"case",-44} {"GB/s",8} {"ratio",8}");
            Console.WriteLine($"{"memcpy, 1 thread (baseline)",-44} {Gbps(memcpy, bytes),8:F2} {1.0,8:F2}");
            Console.WriteLine($"{"update, delivered per worker",-44} {Gbps(wall, delivered),8:F2} {memcpy / bytes * delivered / wall,8:F2}");
            Console.WriteLine($"wall {wall:F3} s; per rank: bucket count, slots, and summed stage times (h2d / broadcast / reload):");
            foreach (var p in best.OrderBy(p => p[1], StringComparer.Ordinal))
            {
                Console.WriteLine($"  rank {p[1]}: {p[4]} buckets, {p[5]} slots, h2d {p[6]} s, broadcast {p[7]} s, reload {p[8]} s, wall {p[3]} s");
            }
            return 0;
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    private static List<string> RunRanks(int ranks, string dir, string url, List<string> ids, int bucketMb)
    {
        var port = Baselines.FreePort();
        var processes = Enumerable.Range(0, ranks).Select(r =>
        {
            var psi = Baselines.Self("update-rank", dir, url, ranks.ToString(CultureInfo.InvariantCulture));
            psi.Environment["RANK"] = r.ToString(CultureInfo.InvariantCulture);
            psi.Environment["WORLD_SIZE"] = ranks.ToString(CultureInfo.InvariantCulture);
            psi.Environment["MASTER_ADDR"] = "127.0.0.1";
            psi.Environment["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture);
            psi.Environment[DeviceIds.Variable] = ids[r];
            psi.Environment["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = (bucketMb / 1024.0).ToString(CultureInfo.InvariantCulture);
            return Process.Start(psi)!;
        }).ToList();
        var lines = new List<string>();
        foreach (var p in processes)
        {
            var output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            var mine = output.Split('\n').Where(l => l.StartsWith("update ", StringComparison.Ordinal)).ToList();
            if (p.ExitCode != 0 || mine.Count == 0)
            {
                throw new InvalidOperationException($"a rank failed (exit {p.ExitCode}):\n{output}");
            }
            lines.AddRange(mine);
        }
        return lines;
    }

    /// <summary>One rank: registers its share, gathers metas, updates four times; prints the last three.</summary>
    public static async Task<int> RunRank(string[] args)
    {
        var (dir, url, tp) = (args[0], args[1], int.Parse(args[2], CultureInfo.InvariantCulture));
        await using var world = await World.JoinAsync(RankConfig.FromEnvironment());
        using var device = new HostDevice(DeviceIds.ForRank(world.Config.LocalRank), freeMemory: 4L << 30);
        await using var ps = new ParameterServer(world, device);
        using (var checkpoint = Checkpoint.Open(dir))
        {
            ps.RegisterCheckpoint("bench", CheckpointSplit.ByTensor(checkpoint, world.Rank, world.Size), options: new RegisterOptions { UsePool = true });
        }
        await ps.GatherMetasAsync("bench");
        var trigger = EngineTrigger.Http(url, tp);
        for (var i = 0; i < 4; i++)
        {
            await world.Group.BarrierAsync(TimeSpan.FromMinutes(1));
            var r = await ps.UpdateAsync("bench", trigger);
            if (i > 0)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"update {world.Rank} {r.BytesDelivered} {r.Duration.TotalSeconds:F4} {r.Buckets.Count} {r.Slots} {r.HostToDevice.TotalSeconds:F3} {r.Broadcast.TotalSeconds:F3} {r.Reload.TotalSeconds:F3}"));
            }
        }
        return 0;
    }
}
