using CheckpointEngine.Memory;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Planning;

/// <summary>
/// One tensor of a part: where it lies in the packed part, and which slices of it (null: whole).
/// <see cref="Source"/>: where it lies in the bucket when it is one contiguous run there (a whole tensor, rows), so
/// a rank that holds the whole bucket can hand it to its worker where it is; null when it must be gathered.
/// <see cref="Pitch"/>: set when the part is one slice along a dimension past the first and its worker takes such parts in
/// place: its rows lie <see cref="Pitch"/> bytes apart in the bucket from <see cref="Source"/> on (the whole tensor's row stride).
/// </summary>
public sealed record PartTensor(ParameterMeta Meta, long Offset, long ByteLength, long[] Shape, TensorPart? Slices, long? Source, long? Pitch = null);

/// <summary>
/// What one worker keeps of a bucket, packed (each tensor 256-byte aligned where its place in the bucket
/// allows, its slices concatenated along their dimension): the byte runs that cut it out of the bucket, in increasing source order, each
/// landing at or before its source offset (so a part can also be cut out of the bucket in place). <see cref="GatheredRuns"/>: the runs
/// a rank that holds the whole bucket still copies to hand its worker the part (tensors that are neither one run of the bucket nor,
/// to a worker that takes them, strided rows of it).
/// </summary>
public sealed record BucketPart(IReadOnlyList<ByteRun> Runs, IReadOnlyList<PartTensor> Tensors, long Size, IReadOnlyList<ByteRun> GatheredRuns)
{
    /// <summary>The tensor bytes the worker receives (the part without alignment padding).</summary>
    public long Bytes => Tensors.Sum(t => t.ByteLength);

    /// <summary>
    /// The part of <paramref name="bucket"/> a worker declaring <paramref name="wants"/> keeps. The wants
    /// must have been checked against the checkpoint (<see cref="WorkerWants.Problems"/>). <paramref name="strided"/>: the worker
    /// takes one slice along a dimension past the first as rows where they lie (<see cref="PartTensor.Pitch"/>); several slices
    /// along such a dimension are gathered still.
    /// </summary>
    public static BucketPart Of(H2DBucket bucket, WorkerWants wants, bool strided = false)
    {
        var runs = new List<ByteRun>();
        var gathered = new List<ByteRun>(); // The runs of tensors that are not one contiguous run in the bucket.
        var tensors = new List<PartTensor>();
        long cursor = 0;
        foreach (var meta in bucket.Items.OrderBy(m => m.Offset))
        {
            var want = wants.For(meta.Name);
            if (want.Kind == WantKind.None)
            {
                continue;
            }
            var start = Math.Min(BucketSizing.Align(cursor), meta.Offset); // Never past its source: the cut can run in place.
            var own = new List<ByteRun>();
            var at = start;
            foreach (var (source, length) in SourceRuns(meta, want))
            {
                Add(own, source, at, length);
                at += length;
            }
            var part = want.Kind == WantKind.Slices
                ? new TensorPart(want.Dimension, [.. want.Slices.OrderBy(s => s.Start).Select(s => new[] { s.Start, s.Length })], [.. meta.Shape])
                : null;
            var bytes = own.Sum(r => r.Length);
            var pitch = strided && own.Count > 1 && want.Slices.Count == 1 ? TensorWant.Around(meta.Shape, want.Dimension).Inner * meta.Shape[want.Dimension] * meta.DType.BitSize() / 8 : (long?)null;
            tensors.Add(new PartTensor(meta, start, bytes, part?.PartShape() ?? [.. meta.Shape], part, own.Count <= 1 || pitch is not null ? own.FirstOrDefault().Source : null, pitch));
            foreach (var r in own)
            {
                Add(runs, r.Source, r.Destination, r.Length);
                if (own.Count > 1 && pitch is null)
                {
                    Add(gathered, r.Source, r.Destination, r.Length);
                }
            }
            cursor = start + bytes;
        }
        return new BucketPart(runs, tensors, cursor, gathered);
    }

    /// <summary>The bytes of <paramref name="bucket"/> a worker declaring <paramref name="wants"/> keeps (null: it declared nothing, all), without packing it.</summary>
    public static long BytesOf(H2DBucket bucket, WorkerWants? wants)
    {
        long bytes = 0;
        foreach (var meta in bucket.Items)
        {
            var want = wants?.For(meta.Name) ?? TensorWant.Whole;
            if (want.Kind == WantKind.Slices)
            {
                var (outer, inner) = TensorWant.Around(meta.Shape, want.Dimension);
                bytes += outer * want.Slices.Sum(s => s.Length) * inner * meta.DType.BitSize() / 8;
            }
            else if (want.Kind == WantKind.Whole)
            {
                bytes += meta.ByteLength;
            }
        }
        return bytes;
    }

    /// <summary>Appends a run, merged with the previous one when both are contiguous (rows of a row slice, whole tensors in a row).</summary>
    private static void Add(List<ByteRun> runs, long source, long destination, long length)
    {
        if (length == 0)
        {
            return;
        }
        if (runs.Count > 0 && runs[^1] is var last && last.Source + last.Length == source && last.Destination + last.Length == destination)
        {
            runs[^1] = last with { Length = last.Length + length };
            return;
        }
        runs.Add(new ByteRun(source, destination, length));
    }

    /// <summary>
    /// The bytes of <paramref name="bucket"/> some worker keeps, as sorted disjoint (offset, length) ranges: the union of the
    /// parts of <paramref name="classes"/>. Null when some worker declared nothing (it keeps everything).
    /// </summary>
    public static IReadOnlyList<(long Offset, long Length)>? Wanted(H2DBucket bucket, IReadOnlyList<WorkerWants?> classes)
    {
        if (classes.Count == 0 || classes.Any(c => c is null))
        {
            return null;
        }
        var pieces = new List<(long Offset, long Length)>();
        foreach (var meta in bucket.Items)
        {
            var wants = classes.Select(c => c!.For(meta.Name)).Where(w => w.Kind != WantKind.None).ToList();
            if (wants.Count == 0)
            {
                continue; // Nobody keeps any of it.
            }
            if (wants.Any(w => w.Kind == WantKind.Whole) || wants.Select(w => w.Dimension).Distinct().Count() > 1)
            {
                pieces.Add((meta.Offset, meta.ByteLength)); // Whole, or slices along different dimensions: the tensor, simply.
                continue;
            }
            // Slices along one dimension (the tensor-parallel case): their union, often the whole tensor again.
            var union = Merge(wants.SelectMany(w => w.Slices).Select(s => (s.Start, s.Length))).Select(s => new SliceRange(s.Offset, s.Length)).ToList();
            pieces.AddRange(union is [{ Start: 0 } only] && only.Length == meta.Shape[wants[0].Dimension]
                ? [(meta.Offset, meta.ByteLength)]
                : SourceRuns(meta, TensorWant.Along(wants[0].Dimension, union)));
        }
        return Merge(pieces);
    }

    /// <summary>Sorted, disjoint ranges covering <paramref name="ranges"/> (touching ones joined).</summary>
    private static List<(long Offset, long Length)> Merge(IEnumerable<(long Offset, long Length)> ranges)
    {
        var merged = new List<(long Offset, long Length)>();
        foreach (var (start, length) in ranges.OrderBy(r => r.Offset))
        {
            if (merged.Count > 0 && merged[^1] is var last && start <= last.Offset + last.Length)
            {
                merged[^1] = (last.Offset, Math.Max(last.Length, start + length - last.Offset));
            }
            else
            {
                merged.Add((start, length));
            }
        }
        return merged;
    }

    /// <summary>Where the bytes of <paramref name="want"/> lie in the bucket, in the part's order: (offset, length) per contiguous piece.</summary>
    private static IEnumerable<(long Source, long Length)> SourceRuns(ParameterMeta meta, TensorWant want)
    {
        if (want.Kind == WantKind.Whole)
        {
            yield return (meta.Offset, meta.ByteLength);
            yield break;
        }
        if (want.Kind == WantKind.None)
        {
            yield break;
        }
        var (dim, shape) = (want.Dimension, meta.Shape);
        var slices = want.Slices.OrderBy(s => s.Start).ToList();
        var (outer, inner) = TensorWant.Around(shape, dim);
        var unitBits = inner * meta.DType.BitSize();
        for (long o = 0; o < outer; o++)
        {
            foreach (var s in slices)
            {
                yield return (meta.Offset + (o * shape[dim] + s.Start) * unitBits / 8, s.Length * unitBits / 8);
            }
        }
    }

    /// <summary>The pieces of <paramref name="range"/> that fall in <paramref name="wanted"/> (all of it when null), as (source offset, bucket offset, length).</summary>
    public static IEnumerable<(long Source, long BucketOffset, long Length)> Cut(BucketRange range, IReadOnlyList<(long Offset, long Length)>? wanted)
    {
        if (wanted is null)
        {
            yield return (range.Offset, range.BucketOffset, range.Length);
            yield break;
        }
        var (from, to) = (range.BucketOffset, range.BucketOffset + range.Length);
        foreach (var (offset, length) in wanted)
        {
            var (a, b) = (Math.Max(from, offset), Math.Min(to, offset + length));
            if (a < b)
            {
                yield return (range.Offset + (a - from), a, b - a);
            }
        }
    }

    /// <summary>Where tensor <paramref name="t"/> lies for a worker: in the bucket when this rank holds the whole bucket and the tensor is one run of it, else in the part.</summary>
    public static long Place(PartTensor t, bool holdsBucket, long bucketOffset, long partOffset) =>
        holdsBucket && t.Source is { } source ? bucketOffset + source : partOffset + t.Offset;

    /// <summary>Cuts the part out of the bucket at <paramref name="bucket"/> into <paramref name="part"/> (the same address: in place).</summary>
    public void CopyOut(nint bucket, nint part) => ByteRun.CopyAll(Runs, bucket, part);
}
