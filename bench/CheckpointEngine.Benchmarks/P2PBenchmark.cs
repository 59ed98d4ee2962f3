using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Hosting.Worker;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;

namespace CheckpointEngine.Benchmarks;

/// <summary>
/// Elastic join on this host: two owner ranks hold the checkpoint; two new ranks (their own world)
/// P2P-update a reference worker from the owners' host memory. Reports the joiners' update throughput
/// (bytes each worker received ÷ update wall time) against one raw loopback TCP socket measured in the
/// same run. Each joiner poses as its own network device, so both read at once.
/// </summary>
public static class P2PBenchmark
{
    public static async Task<int> Run(string[] args)
    {
        var sizeGb = double.Parse(Baselines.Option(args, "--size-gb") ?? "2", CultureInfo.InvariantCulture);
        var bucketMb = int.Parse(Baselines.Option(args, "--bucket-mb") ?? "256", CultureInfo.InvariantCulture);
        var root = Path.Combine(Path.GetTempPath(), $"ckpt-bench-p2p-{Environment.ProcessId}");
        try
        {
            Console.WriteLine($"writing a {sizeGb:F1} GiB sample checkpoint ...");
            var files = SampleCheckpoint.Write(Path.Combine(root, "ckpt"), (long)(sizeGb * (1L << 30)), shards: 8, layers: 16);
            var bytes = files.Sum(f => new FileInfo(f).Length);
            var socket = Baselines.RawSocket(bytes);
            var metas = Path.Combine(root, "metas.json");
            var ids = Enumerable.Range(0, 2).Select(r => $"bench-p2p-{Environment.ProcessId}-{r}").ToList();
            await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions { TensorParallel = 2, DeviceIds = ids });
            var owners = Start("p2p-owner", 2, r => $"bench-owner-{Environment.ProcessId}-{r}", bucketMb, Path.Combine(root, "ckpt"), metas);
            while (!File.Exists(metas))
            {
                if (owners.Any(p => p.HasExited))
                {
                    throw new InvalidOperationException("an owner failed: " + owners.First(p => p.HasExited).StandardOutput.ReadToEnd());
                }
                await Task.Delay(50);
            }
            var joiners = Start("p2p-join", 2, r => ids[r], bucketMb, worker.Address.ToString(), metas);
            var lines = joiners.SelectMany(p =>
            {
                var output = p.StandardOutput.ReadToEnd();
                p.WaitForExit();
                var mine = output.Split('\n').Where(l => l.StartsWith("update ", StringComparison.Ordinal)).ToList();
                return p.ExitCode == 0 && mine.Count > 0 ? mine : throw new InvalidOperationException($"a joiner failed (exit {p.ExitCode}):\n{output}");
            }).ToList();
            File.WriteAllText(metas + ".done", "");
            owners.ForEach(p => p.WaitForExit());
            var best = lines.Select(l => l.Split(' ')).GroupBy(p => p[1]).Select(g => g.MinBy(p => double.Parse(p[3], CultureInfo.InvariantCulture))!).ToList();
            var wall = best.Max(p => double.Parse(p[3], CultureInfo.InvariantCulture));
            var delivered = long.Parse(best[0][2], CultureInfo.InvariantCulture);
            Console.WriteLine($"P2P update of {delivered} bytes from 2 owners to 2 joining ranks; {Environment.ProcessorCount} cores; buckets of {bucketMb} MiB; best of 3 after a warm-up");
            Console.WriteLine($"{"case",-44} {"GB/s",8} {"ratio",8}");
            Console.WriteLine($"{"raw loopback TCP socket (baseline)",-44} {bytes / socket / 1e9,8:F2} {1.0,8:F2}");
            Console.WriteLine($"{"P2P update, delivered per worker",-44} {delivered / wall / 1e9,8:F2} {socket / bytes * delivered / wall,8:F2}");
            foreach (var p in best.OrderBy(p => p[1], StringComparer.Ordinal))
            {
                Console.WriteLine($"  joiner {p[1]}: {p[4]} buckets, read {p[5]} s, broadcast {p[6]} s, reload {p[7]} s, wall {p[3]} s");
            }
            return 0;
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    private static List<Process> Start(string role, int ranks, Func<int, string> deviceId, int bucketMb, params string[] args)
    {
        var port = Baselines.FreePort();
        return Enumerable.Range(0, ranks).Select(r =>
        {
            var psi = Baselines.Self([role, .. args]);
            psi.Environment["RANK"] = r.ToString(CultureInfo.InvariantCulture);
            psi.Environment["WORLD_SIZE"] = ranks.ToString(CultureInfo.InvariantCulture);
            psi.Environment["MASTER_ADDR"] = "127.0.0.1";
            psi.Environment["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture);
            psi.Environment[DeviceIds.Variable] = deviceId(r);
            psi.Environment[ParameterServer.NetDeviceVariable] = $"{role}-nic{r}";
            psi.Environment["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = (bucketMb / 1024.0).ToString(CultureInfo.InvariantCulture);
            return Process.Start(psi)!;
        }).ToList();
    }

    /// <summary>An owner: registers its share, gathers and saves metas (rank 0), serves until told to stop.</summary>
    public static async Task<int> RunOwner(string[] args)
    {
        var (dir, metasPath) = (args[0], args[1]);
        await using var world = await World.JoinAsync(RankConfig.FromEnvironment());
        using var device = new HostDevice(DeviceIds.ForRank(world.Config.LocalRank), freeMemory: 4L << 30);
        await using var ps = new ParameterServer(world, device);
        using (var checkpoint = Checkpoint.Open(dir))
        {
            ps.RegisterCheckpoint("bench", CheckpointSplit.ByTensor(checkpoint, world.Rank, world.Size));
        }
        var metas = await ps.GatherMetasAsync("bench");
        if (world.Rank == 0)
        {
            metas.Save(metasPath);
        }
        while (!File.Exists(metasPath + ".done"))
        {
            await Task.Delay(50);
        }
        await world.Group.BarrierAsync(TimeSpan.FromMinutes(1));
        return 0;
    }

    /// <summary>A joiner: loads the metas and P2P-updates its worker four times; prints the last three.</summary>
    public static async Task<int> RunJoiner(string[] args)
    {
        var (url, metasPath) = (args[0], args[1]);
        await using var world = await World.JoinAsync(RankConfig.FromEnvironment());
        using var device = new HostDevice(DeviceIds.ForRank(world.Config.LocalRank), freeMemory: 4L << 30);
        await using var ps = new ParameterServer(world, device);
        ps.SetMetas(GlobalMetas.Load(metasPath));
        var trigger = EngineTrigger.Http(url, world.Size);
        for (var i = 0; i < 4; i++)
        {
            await world.Group.BarrierAsync(TimeSpan.FromMinutes(1));
            var r = await ps.UpdateAsync("bench", trigger, ranks: [.. Enumerable.Range(0, world.Size)]);
            if (i > 0)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"update {world.Rank} {r.BytesDelivered} {r.Duration.TotalSeconds:F4} {r.Buckets.Count} {r.HostToDevice.TotalSeconds:F3} {r.Broadcast.TotalSeconds:F3} {r.Reload.TotalSeconds:F3}"));
            }
        }
        return 0;
    }
}
