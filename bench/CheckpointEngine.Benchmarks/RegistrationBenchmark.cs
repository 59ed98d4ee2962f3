using System.Diagnostics;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Benchmarks;

/// <summary>
/// Registration throughput from a warm page cache, as a ratio to a plain single-thread memcpy of the
/// same number of bytes between two already-touched buffers, measured in the same run.
/// Reported: first registration (fresh buffers, page faults included), pooled re-registration (the RL
/// loop: same layout, buffers reused), and in-place registration of a tmpfs copy (no bytes copied).
/// </summary>
public static unsafe class RegistrationBenchmark
{
    public static int Run(string[] args)
    {
        var sizeGb = double.Parse(Baselines.Option(args, "--size-gb") ?? "2", System.Globalization.CultureInfo.InvariantCulture);
        var repeat = int.Parse(Baselines.Option(args, "--repeat") ?? "3", System.Globalization.CultureInfo.InvariantCulture);
        var root = Baselines.Option(args, "--dir") ?? Path.Combine(Path.GetTempPath(), $"ckpt-bench-{Environment.ProcessId}");
        var bytes = (long)(sizeGb * (1L << 30));
        var disk = Path.Combine(root, "disk");
        var shm = Path.Combine("/dev/shm", $"ckpt-bench-{Environment.ProcessId}");
        try
        {
            Console.WriteLine($"writing a {sizeGb:F1} GiB sample checkpoint to {disk} ...");
            var files = SampleCheckpoint.Write(disk, bytes, shards: 8, layers: 16);
            var total = files.Sum(f => new FileInfo(f).Length);
            WarmPageCache(files);

            var memcpy = Baselines.Memcpy(total);
            using var registry = new CheckpointRegistry();
            var fresh = Best(repeat, () =>
            {
                var sw = Stopwatch.StartNew();
                registry.RegisterCheckpoint("fresh", files);
                sw.Stop();
                registry.UnregisterCheckpoint("fresh");
                return sw.Elapsed.TotalSeconds;
            });
            registry.RegisterCheckpoint("warmup", files, options: new RegisterOptions { UsePool = true });
            registry.UnregisterCheckpoint("warmup");
            var pooled = Best(repeat, () =>
            {
                var sw = Stopwatch.StartNew();
                var c = registry.RegisterCheckpoint("pooled", files, options: new RegisterOptions { UsePool = true });
                sw.Stop();
                if (c.PoolReuses != c.Buffers.Count)
                {
                    throw new InvalidOperationException("pool did not reuse every buffer");
                }
                registry.UnregisterCheckpoint("pooled");
                return sw.Elapsed.TotalSeconds;
            });
            Directory.CreateDirectory(shm);
            var shmFiles = files.Select(f => { var d = Path.Combine(shm, Path.GetFileName(f)); File.Copy(f, d); return d; }).ToList();
            var inPlace = Best(repeat, () =>
            {
                var sw = Stopwatch.StartNew();
                registry.RegisterCheckpoint("inplace", shmFiles, options: new RegisterOptions { InPlace = true });
                sw.Stop();
                registry.UnregisterCheckpoint("inplace");
                return sw.Elapsed.TotalSeconds;
            });

            double Gbps(double seconds) => total / seconds / 1e9;
            Console.WriteLine($"bytes: {total} in {files.Count} files; threads: {Environment.ProcessorCount}; best of {repeat}");
            Console.WriteLine($"{"case",-34} {"GB/s",8} {"ratio to memcpy",16}");
            Console.WriteLine($"{"memcpy, 1 thread (baseline)",-34} {Gbps(memcpy),8:F2} {1.0,16:F2}");
            Console.WriteLine($"{"register, fresh buffers",-34} {Gbps(fresh),8:F2} {memcpy / fresh,16:F2}");
            Console.WriteLine($"{"register, pooled buffers (RL loop)",-34} {Gbps(pooled),8:F2} {memcpy / pooled,16:F2}");
            Console.WriteLine($"{"register in place (tmpfs, no copy)",-34} {Gbps(inPlace),8:F2} {memcpy / inPlace,16:F2}");
            return 0;
        }
        finally
        {
            if (Directory.Exists(shm))
            {
                Directory.Delete(shm, true);
            }
            if (Baselines.Option(args, "--dir") is null && Directory.Exists(root))
            {
                Directory.Delete(root, true);
            }
        }
    }

    private static void WarmPageCache(IEnumerable<string> files)
    {
        var buffer = new byte[1 << 20];
        foreach (var f in files)
        {
            using var s = File.OpenRead(f);
            while (s.Read(buffer) > 0)
            {
            }
        }
    }

    private static double Best(int repeat, Func<double> run) => Enumerable.Range(0, repeat).Select(_ => run()).Min();
}
