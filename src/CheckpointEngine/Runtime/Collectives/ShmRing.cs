using CheckpointEngine.Interop;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// A broadcast ring in shared memory for the members of a group on one host. One member (the
/// bucket's root, or the host's leader fed over TCP) writes chunks into a few slots; every other
/// member copies them out. Each chunk has a sequence number that every local member derives the same
/// way, so slots are reused only after all members acknowledged them. Sleeping uses futexes on the
/// slot words, so waiting members do not steal cores from the copying ones.
/// </summary>
internal sealed unsafe class ShmRing : IDisposable
{
    public const int SlotCount = 4;
    public const int ChunkSize = 4 << 20;
    private const int HeaderSize = 64 << 10;
    private const int Line = 64;
    private const int MaxMembers = (HeaderSize - 256 - Line * SlotCount) / (Line * SlotCount);

    private readonly SharedMemorySegment _segment;
    private readonly int[] _worldRanks;
    private readonly int _members;
    private readonly int _me;
    private long _next = 1;

    private ShmRing(SharedMemorySegment segment, int[] worldRanks, int me)
    {
        _segment = segment;
        _worldRanks = worldRanks;
        _members = worldRanks.Length;
        _me = me;
    }

    public static long SegmentSize => HeaderSize + (long)SlotCount * ChunkSize;

    /// <summary>Creates the ring for the local members (given by world rank, in local order); <paramref name="me"/> is this process's local index.</summary>
    public static ShmRing Create(string name, int[] worldRanks, int me) => new(SharedMemorySegment.Create(name, SegmentSize), Check(worldRanks), me);

    public static ShmRing Open(string name, int[] worldRanks, int me) => new(SharedMemorySegment.Open(name, SegmentSize), Check(worldRanks), me);

    private static int[] Check(int[] worldRanks) => worldRanks.Length <= MaxMembers
        ? worldRanks
        : throw new ArgumentOutOfRangeException(nameof(worldRanks), $"at most {MaxMembers} ranks per host share a ring");

    public void Unlink() => _segment.Unlink();

    private byte* Base => _segment.Pointer;

    /// <summary>Per slot, on one cache line: the chunk number published in it, then the sequence number and length of its broadcast.</summary>
    private int* Published(int slot) => (int*)(Base + 256 + Line * slot);

    private long* Seq(int slot) => (long*)(Base + 256 + Line * slot + 8);

    private long* Length(int slot) => (long*)(Base + 256 + Line * slot + 16);

    private int* Acked(int member, int slot) => (int*)(Base + 256 + Line * SlotCount + Line * (member * SlotCount + slot));

    private byte* Slot(int slot) => Base + HeaderSize + (long)slot * ChunkSize;

    /// <summary>Publishes one chunk, tagged with its broadcast's sequence number and length for the readers to check.</summary>
    public void WriteChunk(byte* source, int length, long seq, long total, in WaitContext wait)
    {
        var g = _next++;
        var slot = (int)(g % SlotCount);
        var previous = (int)(g - SlotCount);
        for (var m = 0; m < _members; m++)
        {
            if (m != _me)
            {
                WaitUntil(Acked(m, slot), v => v - previous >= 0, wait, _worldRanks[m]);
            }
        }
        *Seq(slot) = seq;
        *Length(slot) = total;
        Buffer.MemoryCopy(source, Slot(slot), ChunkSize, length);
        Volatile.Write(ref *Published(slot), (int)g);
        Futex.WakeAll(Published(slot));
        Volatile.Write(ref *Acked(_me, slot), (int)g);
        Futex.WakeAll(Acked(_me, slot));
    }

    /// <summary>Copies out the next chunk, after checking that the writer agrees on the broadcast's sequence number and length.</summary>
    public void ReadChunk(byte* destination, int length, long seq, long total, in WaitContext wait, int writerWorldRank)
    {
        var g = _next++;
        var slot = (int)(g % SlotCount);
        WaitUntil(Published(slot), v => v == (int)g, wait, writerWorldRank);
        if (*Seq(slot) != seq || *Length(slot) != total)
        {
            throw wait.Fail($"this rank expects broadcast #{seq} of {total} bytes but the writer sent #{*Seq(slot)} of {*Length(slot)} bytes (members disagree on the call)", writerWorldRank);
        }
        Buffer.MemoryCopy(Slot(slot), destination, length, length);
        Volatile.Write(ref *Acked(_me, slot), (int)g);
        Futex.WakeAll(Acked(_me, slot));
    }

    private static void WaitUntil(int* word, Func<int, bool> done, in WaitContext wait, int peerWorldRank)
    {
        var spins = 0;
        while (true)
        {
            var v = Volatile.Read(ref *word);
            if (done(v))
            {
                return;
            }
            wait.Check(peerWorldRank);
            if (++spins < 64)
            {
                Thread.SpinWait(20);
                continue;
            }
            Futex.Wait(word, v, 20);
        }
    }

    public void Dispose() => _segment.Dispose();
}
