using System.Buffers;
using CheckpointEngine.Quantization;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Memory;

/// <summary>
/// Fills packed buffers from their sources in parallel. Tensors are cut into chunks so that a few
/// large tensors still keep every thread busy; file tensors are read with positioned reads straight
/// into the buffer (no mapping of the source, no intermediate copy). A weight quantized on the way is
/// read from the file's mapping (or the caller's memory) and encoded straight into its place, its
/// scales beside it, in jobs of whole row blocks. Every tensor's CRC-32 is computed on the way: a copied
/// chunk is hashed right after it is written (still in cache), the rest (quantized weights, their scales,
/// tmpfs files mapped in place) in a second parallel pass; chunk CRCs are combined per tensor.
/// </summary>
internal static unsafe class TensorCopier
{
    private const long ChunkSize = TensorChecksum.Piece; // Chunks are the checksum's pieces, so each job hashes its own.

    /// <summary>A byte range to copy; for a quantized weight, <see cref="Offset"/> and <see cref="Length"/> count row blocks and <see cref="Scales"/> is its scale tensor.</summary>
    private readonly record struct Job(CheckpointRegistry.Entry Entry, long Offset, long Length, nint Destination, nint Scales = 0);

    /// <summary>Fills <paramref name="buffers"/> from <paramref name="sources"/>; returns the buffers with every meta's <see cref="ParameterMeta.Crc32"/> set.</summary>
    public static List<MemoryBuffer> Copy(IReadOnlyList<MemoryBuffer> buffers, IReadOnlyDictionary<string, CheckpointRegistry.Entry> sources, int threads)
    {
        var pieces = NewPieces(buffers);
        var jobs = new List<Job>();
        var addresses = buffers.SelectMany(b => b.Metas.Select(m => (m.Name, Address: (nint)(b.Pointer + m.Offset)))).ToDictionary(t => t.Name, t => t.Address, StringComparer.Ordinal);
        foreach (var buffer in buffers)
        {
            foreach (var meta in buffer.Metas)
            {
                var entry = sources[meta.Name];
                if (entry.ScaleOf is not null)
                {
                    continue; // Written by its weight's jobs.
                }
                if (entry.Fp8 is { } fp8)
                {
                    var (rows, cols) = (entry.Shape[0], entry.Shape[1]);
                    var rowBlocks = (rows + fp8.BlockRows - 1) / fp8.BlockRows;
                    var perJob = Math.Max(1, ChunkSize / (fp8.BlockRows * cols * entry.SourceDType.Alignment()));
                    var scales = addresses[Fp8Quantization.ScaleName(meta.Name)];
                    for (long rb = 0; rb < rowBlocks; rb += perJob)
                    {
                        jobs.Add(new Job(entry, rb, Math.Min(perJob, rowBlocks - rb), (nint)(buffer.Pointer + meta.Offset), scales));
                    }
                    continue;
                }
                for (long off = 0; off < meta.ByteLength; off += ChunkSize)
                {
                    jobs.Add(new Job(entry, off, Math.Min(ChunkSize, meta.ByteLength - off), (nint)(buffer.Pointer + meta.Offset + off)));
                }
            }
        }
        var pins = new Dictionary<string, MemoryHandle>(StringComparer.Ordinal);
        try
        {
            foreach (var e in sources.Values.Where(e => e.Named is not null && e.ScaleOf is null))
            {
                pins[e.Name] = e.Named!.Pin();
            }
            Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, i =>
            {
                var job = jobs[i];
                if (job.Entry.Fp8 is { } fp8)
                {
                    var e = job.Entry;
                    var source = e.File is { } f ? (nint)f.View(e.Tensor!).Pointer : (nint)pins[e.Name].Pointer;
                    var t = new Fp8Tensor(source, e.SourceDType, e.Shape[0], e.Shape[1], fp8.BlockRows, fp8.BlockCols, job.Scales);
                    for (var rb = job.Offset; rb < job.Offset + job.Length; rb++)
                    {
                        Fp8BlockQuantizer.QuantizeRowBlock(t, rb, (byte*)job.Destination + rb * fp8.BlockRows * t.Cols);
                    }
                }
                else if (job.Entry.File is { } file)
                {
                    file.ReadInto(job.Entry.Tensor!, job.Offset, job.Length, (byte*)job.Destination);
                }
                else
                {
                    var source = (byte*)pins[job.Entry.Name].Pointer + job.Offset;
                    Buffer.MemoryCopy(source, (void*)job.Destination, job.Length, job.Length);
                }
                if (job.Entry.Fp8 is null)
                {
                    pieces[job.Entry.Name][job.Offset / ChunkSize] = TensorChecksum.Crc32((byte*)job.Destination, job.Length);
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
        var unhashed = buffers.SelectMany(b => b.Metas.Where(m => sources[m.Name].Fp8 is not null || sources[m.Name].ScaleOf is not null).Select(m => (b, m)));
        return WithChecksums(buffers, pieces, unhashed, threads);
    }

    /// <summary>Buffers whose bytes are already in place (tmpfs files mapped in place): hashes every tensor, in parallel.</summary>
    public static List<MemoryBuffer> Checksum(IReadOnlyList<MemoryBuffer> buffers, int threads) =>
        WithChecksums(buffers, NewPieces(buffers), buffers.SelectMany(b => b.Metas.Select(m => (b, m))), threads);

    private static Dictionary<string, uint[]> NewPieces(IReadOnlyList<MemoryBuffer> buffers) =>
        buffers.SelectMany(b => b.Metas).ToDictionary(m => m.Name, m => new uint[Math.Max(1, (m.ByteLength + ChunkSize - 1) / ChunkSize)], StringComparer.Ordinal);

    /// <summary>Hashes the pieces of <paramref name="unhashed"/> in parallel, then combines each tensor's pieces into its meta.</summary>
    private static List<MemoryBuffer> WithChecksums(IReadOnlyList<MemoryBuffer> buffers, Dictionary<string, uint[]> pieces,
        IEnumerable<(MemoryBuffer Buffer, ParameterMeta Meta)> unhashed, int threads)
    {
        var jobs = unhashed.SelectMany(t => Enumerable.Range(0, pieces[t.Meta.Name].Length).Select(i => (t.Buffer, t.Meta, Piece: i))).ToList();
        Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, i =>
        {
            var (buffer, meta, piece) = jobs[i];
            var offset = piece * ChunkSize;
            pieces[meta.Name][piece] = TensorChecksum.Crc32(buffer.Pointer + meta.Offset + offset, Math.Min(ChunkSize, meta.ByteLength - offset));
        });
        return buffers.Select(b => new MemoryBuffer(b.Address, b.Size,
            b.Metas.Select(m => m with { Crc32 = TensorChecksum.CombinePieces(pieces[m.Name], m.ByteLength) }).ToList(), b.Kind, b.Segment)).ToList();
    }
}
