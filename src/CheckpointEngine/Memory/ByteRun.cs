namespace CheckpointEngine.Memory;

/// <summary>Bytes to copy: <see cref="Length"/> bytes from <see cref="Source"/> in one buffer to <see cref="Destination"/> in another.</summary>
public readonly record struct ByteRun(long Source, long Destination, long Length)
{
    /// <summary>
    /// Copies every run from <paramref name="source"/> to <paramref name="destination"/>, in order. With runs in
    /// increasing source order that never land past their source, the two may be the same buffer (memmove semantics).
    /// </summary>
    public static unsafe void CopyAll(IReadOnlyList<ByteRun> runs, nint source, nint destination)
    {
        using var copy = new StreamingCopy.Batch(runs.Sum(r => r.Length));
        foreach (var r in runs)
        {
            copy.Copy((byte*)(source + (nint)r.Source), (byte*)(destination + (nint)r.Destination), r.Length);
        }
    }
}

/// <summary>
/// <see cref="Rows"/> runs of <see cref="Width"/> bytes, <see cref="SourcePitch"/> apart at the source and
/// <see cref="DestinationPitch"/> apart at the destination: one strided copy (a column slice of a matrix) instead of a copy per row.
/// </summary>
public readonly record struct StridedRun(long Source, long SourcePitch, long Destination, long DestinationPitch, long Width, long Rows)
{
    /// <summary>The bytes from the first source byte to the last.</summary>
    public long SourceExtent => (Rows - 1) * SourcePitch + Width;

    public long DestinationExtent => (Rows - 1) * DestinationPitch + Width;

    /// <summary>Whether the bytes it reads and those it writes (within one buffer) overlap: then it cannot run as one parallel copy.</summary>
    public bool Overlaps => Destination < Source + SourceExtent && Source < Destination + DestinationExtent;

    /// <summary>Consecutive runs of equal length at equal source and destination strides, folded into strided runs (order kept).</summary>
    public static List<StridedRun> Fold(IReadOnlyList<ByteRun> runs)
    {
        var folded = new List<StridedRun>();
        foreach (var r in runs)
        {
            if (folded.Count > 0 && folded[^1] is var last && last.Width == r.Length && r.Source > last.Source && r.Destination > last.Destination)
            {
                var (sourcePitch, destinationPitch) = (r.Source - (last.Source + (last.Rows - 1) * last.SourcePitch), r.Destination - (last.Destination + (last.Rows - 1) * last.DestinationPitch));
                if (last.Rows == 1 && sourcePitch >= r.Length && destinationPitch >= r.Length
                    || last.Rows > 1 && sourcePitch == last.SourcePitch && destinationPitch == last.DestinationPitch)
                {
                    folded[^1] = last with { SourcePitch = sourcePitch, DestinationPitch = destinationPitch, Rows = last.Rows + 1 };
                    continue;
                }
            }
            folded.Add(new StridedRun(r.Source, r.Length, r.Destination, r.Length, r.Length, 1));
        }
        return folded;
    }
}
