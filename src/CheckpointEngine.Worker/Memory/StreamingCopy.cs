using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CheckpointEngine.Memory;

/// <summary>
/// Host-memory copies of weights: large ones go around the caches with non-temporal stores, which write whole
/// cache lines straight to memory instead of first reading each destination line in (a third less memory traffic:
/// copies that stream gigabytes are bound by it). glibc's memcpy streams only copies above its threshold (hundreds of
/// MiB on large-cache machines), so tensors, bucket parts and rows a few KiB wide went through the caches. Copies below
/// <see cref="Threshold"/> in all, and any copy where AVX is missing, use <see cref="Buffer.MemoryCopy"/>.
/// Every copy that streams ends with a store fence: what it wrote is visible, in order, before whatever the caller
/// writes next (the flag or reply that tells another process the bytes are there).
/// </summary>
public static unsafe class StreamingCopy
{
    /// <summary>Copies with fewer bytes than this in all go through the caches (they may be read again soon).</summary>
    public const long Threshold = 256 << 10;

    /// <summary>Whether this machine streams copies at or above <see cref="Threshold"/> (x86 with AVX).</summary>
    public static bool Streams => Avx.IsSupported;

    /// <summary>
    /// Copies <paramref name="length"/> bytes. The two ranges may overlap only with <paramref name="destination"/> at or before
    /// <paramref name="source"/> (a part cut out of a bucket in place); then it copies forward, as memmove does.
    /// </summary>
    public static void Copy(byte* source, byte* destination, long length)
    {
        using var batch = new Batch(length);
        batch.Copy(source, destination, length);
    }

    /// <summary>
    /// Copies <paramref name="rows"/> runs of <paramref name="width"/> bytes, <paramref name="sourcePitch"/> apart at the source and
    /// <paramref name="destinationPitch"/> apart at the destination (a column slice of a matrix), in order.
    /// Overlap is allowed as for <see cref="Copy"/>: each row at or before its source, rows in increasing order.
    /// </summary>
    public static void CopyRows(byte* source, long sourcePitch, byte* destination, long destinationPitch, long width, long rows)
    {
        using var batch = new Batch(rows * width);
        for (long i = 0; i < rows; i++)
        {
            batch.Copy(source + (i * sourcePitch), destination + (i * destinationPitch), width);
        }
    }

    /// <summary>
    /// Several copies of <c>total</c> bytes in all (a bucket part's runs, a tensor's rows): they stream when the total reaches
    /// <see cref="Threshold"/>, however small each is, and one fence at <see cref="Dispose"/> ends them.
    /// </summary>
    public ref struct Batch(long total)
    {
        private readonly bool _stream = total >= Threshold && Streams;

        /// <summary>One copy of the batch; overlap is allowed as for <see cref="StreamingCopy.Copy"/>.</summary>
        public readonly void Copy(byte* source, byte* destination, long length)
        {
            if (_stream && !(destination > source && destination < source + length))
            {
                Stream(source, destination, length);
            }
            else
            {
                Buffer.MemoryCopy(source, destination, length, length);
            }
        }

        public readonly void Dispose()
        {
            if (_stream)
            {
                Sse.StoreFence();
            }
        }
    }

    /// <summary>
    /// Forward copy with 32-byte non-temporal stores: the head up to the destination's 32-byte alignment and the tail through the
    /// caches, the body 128 bytes per step (four unaligned loads, then four aligned streaming stores). Reads each 128 bytes before
    /// writing them, so a destination at or before the source is safe. The caller fences.
    /// </summary>
    private static void Stream(byte* s, byte* d, long n)
    {
        var head = Math.Min(n, (32 - ((nint)d & 31)) & 31);
        if (head > 0)
        {
            Buffer.MemoryCopy(s, d, head, head);
            s += head;
            d += head;
            n -= head;
        }
        for (; n >= 128; s += 128, d += 128, n -= 128)
        {
            var (a, b, c, e) = (Avx.LoadVector256(s), Avx.LoadVector256(s + 32), Avx.LoadVector256(s + 64), Avx.LoadVector256(s + 96));
            Avx.StoreAlignedNonTemporal(d, a);
            Avx.StoreAlignedNonTemporal(d + 32, b);
            Avx.StoreAlignedNonTemporal(d + 64, c);
            Avx.StoreAlignedNonTemporal(d + 96, e);
        }
        for (; n >= 32; s += 32, d += 32, n -= 32)
        {
            Avx.StoreAlignedNonTemporal(d, Avx.LoadVector256(s));
        }
        if (n > 0)
        {
            Buffer.MemoryCopy(s, d, n, n);
        }
    }
}
