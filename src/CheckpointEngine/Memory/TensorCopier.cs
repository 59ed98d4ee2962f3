using System.Buffers;

namespace CheckpointEngine.Memory;

/// <summary>
/// Fills packed buffers from their sources in parallel. Tensors are cut into chunks so that a few
/// large tensors still keep every thread busy; file tensors are read with positioned reads straight
/// into the buffer (no mapping of the source, no intermediate copy).
/// </summary>
internal static unsafe class TensorCopier
{
    private const long ChunkSize = 16L << 20;

    private readonly record struct Job(CheckpointRegistry.Entry Entry, long Offset, long Length, nint Destination);

    public static void Copy(IReadOnlyList<MemoryBuffer> buffers, IReadOnlyDictionary<string, CheckpointRegistry.Entry> sources, int threads)
    {
        var jobs = new List<Job>();
        foreach (var buffer in buffers)
        {
            foreach (var meta in buffer.Metas)
            {
                var entry = sources[meta.Name];
                for (long off = 0; off < meta.ByteLength; off += ChunkSize)
                {
                    jobs.Add(new Job(entry, off, Math.Min(ChunkSize, meta.ByteLength - off), (nint)(buffer.Pointer + meta.Offset + off)));
                }
            }
        }
        var pins = new Dictionary<string, MemoryHandle>(StringComparer.Ordinal);
        try
        {
            foreach (var e in sources.Values.Where(e => e.Named is not null))
            {
                pins[e.Name] = e.Named!.Pin();
            }
            Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, i =>
            {
                var job = jobs[i];
                if (job.Entry.File is { } file)
                {
                    file.ReadInto(job.Entry.Tensor!, job.Offset, job.Length, (byte*)job.Destination);
                }
                else
                {
                    var source = (byte*)pins[job.Entry.Name].Pointer + job.Offset;
                    Buffer.MemoryCopy(source, (void*)job.Destination, job.Length, job.Length);
                }
            });
        }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
        finally
        {
            foreach (var pin in pins.Values)
            {
                pin.Dispose();
            }
        }
    }
}
