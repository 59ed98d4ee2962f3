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
        foreach (var r in runs)
        {
            Buffer.MemoryCopy((void*)(source + (nint)r.Source), (void*)(destination + (nint)r.Destination), r.Length, r.Length);
        }
    }
}
