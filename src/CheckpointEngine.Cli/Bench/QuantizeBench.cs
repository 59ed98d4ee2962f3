using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Hosting;
using CheckpointEngine.Memory;
using CheckpointEngine.Quantization;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// <c>bench --method quantize</c>: block-scaled FP8 quantization of the bench checkpoint's BF16 linear weights,
/// read from the files' mappings (warm page cache) into native buffers allocated once, in this process:
/// on one thread and on every thread, as GB/s of BF16 input against single-thread memcpy. The kernels and
/// the selection are those of <c>quantize</c> and of registration with <c>--quantize fp8</c>.
/// </summary>
internal static unsafe class QuantizeBench
{
    public const string OneThread = "1 thread";
    public const string AllThreads = "all threads";

    public static List<ConfigurationResult> Measure(string dir, long size, int repeat, TextWriter progress, CancellationToken ct)
    {
        using var checkpoint = Checkpoint.Open(dir);
        var fp8 = new Fp8Quantization();
        var weights = checkpoint.AllTensors().Where(x => x.Tensor.DType == DType.BF16 && fp8.Selects(x.Tensor.Name, x.Tensor.DType, x.Tensor.Shape.AsSpan())).ToList();
        if (weights.Count == 0)
        {
            throw new CheckpointEngineException($"{dir}: the bench checkpoint has no BF16 linear weights to quantize");
        }
        var outputs = new List<NativeBuffer>();
        try
        {
            var jobs = new List<(Fp8Tensor Tensor, long RowBlock, nint Destination)>();
            foreach (var (file, t) in weights)
            {
                var q = new Fp8Tensor((nint)file.View(t).Pointer, t.DType, t.Shape[0], t.Shape[1], fp8.BlockRows, fp8.BlockCols, 0);
                var codes = NativeBuffer.Allocate(q.Rows * q.Cols);
                var scales = NativeBuffer.Allocate(q.RowBlocks * q.ColBlocks * sizeof(float));
                outputs.AddRange([codes, scales]);
                q = q with { Scales = scales.Address };
                for (long rb = 0; rb < q.RowBlocks; rb++)
                {
                    jobs.Add((q, rb, codes.Address + (nint)(rb * q.BlockRows * q.Cols)));
                }
            }
            var bytes = weights.Sum(w => w.Tensor.ByteLength);
            List<ConfigurationResult> results = [Case(OneThread, 1, jobs, bytes, size, repeat, progress, ct)];
            if (Environment.ProcessorCount > 1)
            {
                results.Add(Case(AllThreads, Environment.ProcessorCount, jobs, bytes, size, repeat, progress, ct));
            }
            return results;
        }
        finally
        {
            outputs.ForEach(b => b.Dispose());
        }
    }

    private static ConfigurationResult Case(string name, int threads, List<(Fp8Tensor Tensor, long RowBlock, nint Destination)> jobs, long bytes, long size, int repeat,
        TextWriter progress, CancellationToken ct)
    {
        _ = PeakMemory.ResetSelf();
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads, CancellationToken = ct };
        var lines = new List<ResultLine>();
        for (var k = 0; k <= repeat; k++)
        {
            var clock = Stopwatch.StartNew();
            Parallel.For(0, jobs.Count, options, i => Fp8BlockQuantizer.QuantizeRowBlock(jobs[i].Tensor, jobs[i].RowBlock, (byte*)jobs[i].Destination));
            lines.Add(new ResultLine(-1, BenchSettings.Quantize, bytes, clock.Elapsed.TotalSeconds, 0, double.NaN, double.NaN, double.NaN, k));
        }
        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bench: {BenchSettings.Quantize} ({name}), {BenchSettings.SizeLabel(size)}: {ByteSize.Format(bytes)} of BF16, {string.Join(", ", lines.Select(l => l.Seconds.ToString("F3", CultureInfo.InvariantCulture)))} s (the first is the warm-up)"));
        return new ConfigurationResult(BenchSettings.Quantize, 1, size, bytes, lines[0], lines[1..], new Dictionary<int, long>(), PeakMemory.Self(), name);
    }
}
