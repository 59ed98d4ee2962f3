using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// <c>bench --method registration</c>: registering the bench's checkpoint into host memory from a warm page
/// cache, in this process, compared with single-thread memcpy. Three rows: fresh buffers (page faults
/// included), pooled buffers (the RL loop: same layout, buffers reused) and in place (a tmpfs copy mapped,
/// no bytes copied). Each case registers <c>repeat</c> + 1 times; the first is the warm-up.
/// </summary>
internal static class RegistrationBench
{
    public const string Fresh = "fresh";
    public const string Pooled = "pooled";
    public const string InPlace = "in place";

    private const string Name = "bench";

    public static List<ConfigurationResult> Measure(string dir, long size, int repeat, TextWriter progress, CancellationToken ct)
    {
        var files = Checkpoint.ResolveFiles(dir);
        WarmPageCache(files);
        var results = new List<ConfigurationResult>();
        using (var registry = new CheckpointRegistry())
        {
            results.Add(Case(Fresh, registry, files, new RegisterOptions(), size, repeat, progress, ct));
            results.Add(Case(Pooled, registry, files, new RegisterOptions { UsePool = true }, size, repeat, progress, ct));
        }
        // Copied only now: the tmpfs copy is a second checkpoint's worth of memory.
        var tmpfs = Path.Combine(SharedMemorySegment.Directory, $"ckpt-engine-bench-{Environment.ProcessId}-registration");
        try
        {
            Directory.CreateDirectory(tmpfs);
            var copies = files.Select(f => { var to = Path.Combine(tmpfs, Path.GetFileName(f)); File.Copy(f, to); return to; }).ToList();
            using var registry = new CheckpointRegistry();
            results.Add(Case(InPlace, registry, copies, new RegisterOptions { InPlace = true }, size, repeat, progress, ct));
        }
        finally
        {
            if (Directory.Exists(tmpfs))
            {
                Directory.Delete(tmpfs, recursive: true);
            }
        }
        return results;
    }

    /// <summary>
    /// Registers and unregisters <c>repeat</c> + 1 times, timing each registration, and checks that each did
    /// what the case claims (after the warm-up a pooled one reuses every buffer; an in-place one copies nothing).
    /// </summary>
    private static ConfigurationResult Case(string name, CheckpointRegistry registry, IReadOnlyList<string> files, RegisterOptions options, long size, int repeat,
        TextWriter progress, CancellationToken ct)
    {
        _ = PeakMemory.ResetSelf(); // Whether that works is the runner's to report.
        var lines = new List<ResultLine>();
        for (var k = 0; k <= repeat; k++)
        {
            ct.ThrowIfCancellationRequested();
            var clock = Stopwatch.StartNew();
            var checkpoint = registry.RegisterCheckpoint(Name, files, options: options);
            var seconds = clock.Elapsed.TotalSeconds;
            registry.UnregisterCheckpoint(Name);
            if (options.UsePool && k > 0 && checkpoint.PoolReuses != checkpoint.Buffers.Count)
            {
                throw new InvalidOperationException($"pooled registration {k} reused {checkpoint.PoolReuses} of {checkpoint.Buffers.Count} buffers");
            }
            if (options.InPlace && checkpoint.CopiedBytes != 0)
            {
                throw new InvalidOperationException($"in-place registration of {files[0]} copied {checkpoint.CopiedBytes} bytes instead of mapping them");
            }
            lines.Add(new ResultLine(-1, BenchSettings.Registration, checkpoint.TensorBytes, seconds, 0, double.NaN, double.NaN, double.NaN, k));
        }
        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bench: {BenchSettings.Registration} ({name}), {BenchSettings.SizeLabel(size)}: {ByteSize.Format(lines[0].Bytes)}, {string.Join(", ", lines.Select(l => l.Seconds.ToString("F3", CultureInfo.InvariantCulture)))} s (the first is the warm-up)"));
        return new ConfigurationResult(BenchSettings.Registration, 1, size, lines[0].Bytes, lines[0], lines[1..], new Dictionary<int, long>(), PeakMemory.Self(), name);
    }

    /// <summary>Reads every file once, so registration copies from the page cache rather than the disk.</summary>
    private static unsafe void WarmPageCache(IEnumerable<string> files)
    {
        const int Chunk = 1 << 20;
        using var buffer = NativeBuffer.Allocate(Chunk);
        var span = new Span<byte>(buffer.Pointer, Chunk);
        foreach (var file in files)
        {
            using var handle = File.OpenHandle(file);
            for (long at = 0, n; (n = RandomAccess.Read(handle, span, at)) > 0; at += n)
            {
            }
        }
    }
}
