using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Benchmarks;

/// <summary>
/// Broadcast of one buffer from rank 0 to the other ranks, all on this host, as real processes:
/// through the shared-memory ring (per-receiver throughput vs single-thread memcpy), and through the
/// TCP chain with every rank pretending to be its own host (vs one raw loopback socket).
/// </summary>
public static class BroadcastBenchmark
{
    public static int Run(string[] args)
    {
        var sizeGb = double.Parse(Baselines.Option(args, "--size-gb") ?? "1", CultureInfo.InvariantCulture);
        var ranks = int.Parse(Baselines.Option(args, "--ranks") ?? "4", CultureInfo.InvariantCulture);
        var bytes = (long)(sizeGb * (1L << 30));

        var memcpy = Baselines.Memcpy(bytes);
        var socket = Baselines.RawSocket(bytes);
        var shm = RunRanks(ranks, bytes, sameHost: true);
        var tcp = RunRanks(ranks, bytes, sameHost: false);

        double Gbps(double s) => bytes / s / 1e9;
        Console.WriteLine($"broadcast of {bytes} bytes from rank 0 to {ranks - 1} ranks; {Environment.ProcessorCount} cores; best of 3, slowest receiver");
        Console.WriteLine($"{"case",-46} {"GB/s",8} {"ratio",8}");
        Console.WriteLine($"{"memcpy, 1 thread (baseline)",-46} {Gbps(memcpy),8:F2} {1.0,8:F2}");
        Console.WriteLine($"{"broadcast, shared memory, per receiver",-46} {Gbps(shm),8:F2} {memcpy / shm,8:F2}");
        Console.WriteLine($"{"raw loopback TCP socket (baseline)",-46} {Gbps(socket),8:F2} {1.0,8:F2}");
        Console.WriteLine($"{"broadcast, TCP chain, per receiver",-46} {Gbps(tcp),8:F2} {socket / tcp,8:F2}");
        return 0;
    }

    /// <summary>Starts the rank processes; returns the slowest rank's best broadcast time.</summary>
    private static double RunRanks(int ranks, long bytes, bool sameHost)
    {
        var port = Baselines.FreePort();
        var processes = Enumerable.Range(0, ranks).Select(r =>
        {
            var psi = Baselines.Self("broadcast-rank", bytes.ToString(CultureInfo.InvariantCulture));
            psi.Environment["RANK"] = r.ToString(CultureInfo.InvariantCulture);
            psi.Environment["WORLD_SIZE"] = ranks.ToString(CultureInfo.InvariantCulture);
            psi.Environment["MASTER_ADDR"] = "127.0.0.1";
            psi.Environment["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture);
            psi.Environment[RankConfig.HostIdVariable] = sameHost ? "bench" : $"bench-host-{r}";
            return Process.Start(psi)!;
        }).ToList();
        var times = processes.Select(p =>
        {
            var output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            var line = output.Split('\n').FirstOrDefault(l => l.StartsWith("seconds ", StringComparison.Ordinal))
                ?? throw new InvalidOperationException($"a rank failed (exit {p.ExitCode}):\n{output}");
            return double.Parse(line[8..], CultureInfo.InvariantCulture);
        }).ToList();
        return times.Max();
    }

    /// <summary>One rank: joins, warms the buffer and links with one broadcast, then times three.</summary>
    public static int RunRank(string[] args)
    {
        var bytes = long.Parse(args[0], CultureInfo.InvariantCulture);
        return Task.Run(async () =>
        {
            await using var world = await World.JoinAsync(RankConfig.FromEnvironment());
            var g = world.Group;
            var timeout = TimeSpan.FromMinutes(2);
            // Buffers in shared memory, as the host backend's device buffers are: local readers copy straight from the root's.
            using var buffer = SharedMemorySegment.Create($"ckpt-engine-bench-{Environment.ProcessId}", bytes);
            Baselines.Touch(buffer.Address, bytes);
            g.RegisterSharedMemory(buffer);
            await g.BroadcastAsync(buffer.Address, bytes, 0, timeout);
            var best = double.MaxValue;
            for (var i = 0; i < 3; i++)
            {
                await g.BarrierAsync(timeout);
                var sw = Stopwatch.StartNew();
                await g.BroadcastAsync(buffer.Address, bytes, 0, timeout);
                best = Math.Min(best, sw.Elapsed.TotalSeconds);
            }
            await g.BarrierAsync(timeout);
            Console.WriteLine($"seconds {best.ToString("R", CultureInfo.InvariantCulture)}");
            return 0;
        }).GetAwaiter().GetResult();
    }
}
