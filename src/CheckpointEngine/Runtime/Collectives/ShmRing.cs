using System.Text;
using CheckpointEngine.Interop;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// The shared-memory channel of a group's members on one host. Per broadcast, the writer (the root,
/// or the host's leader fed over TCP) posts a descriptor on a board. When the writer's buffer lies in
/// a shared segment the readers map, the descriptor names it and readers copy straight out of it as
/// the writer reports progress (one copy per reader, none by the writer). Otherwise data goes through
/// a ring of a few chunk slots (writer copies in, readers copy out). Chunk and broadcast numbers are
/// derived identically by every member, so nothing is reused before all members acknowledged it.
/// Waiting uses futexes on the words that change, so idle members do not steal cores from copiers.
/// </summary>
internal sealed unsafe class ShmRing : IDisposable
{
    public const int SlotCount = 4;
    public const int ChunkSize = 4 << 20;
    public const int MaxMembers = 64;
    private const int Line = 64;
    private const int NameCapacity = 192;
    private const int SlotBase = 256;
    private const int AckBase = SlotBase + Line * SlotCount;
    private const int DoneBase = AckBase + Line * SlotCount * MaxMembers;
    private const int BoardBase = DoneBase + Line * MaxMembers;
    private const int BoardSize = 512;
    private const int HeaderSize = 64 << 10;

    public enum Mode
    {
        Ring = 1,
        Direct = 2,
    }

    /// <summary>What readers learn of a broadcast: how the data comes, and for direct mode from which segment and offset.</summary>
    public readonly record struct Descriptor(Mode Mode, string Segment, long Offset);

    private readonly SharedMemorySegment _segment;
    private readonly int[] _worldRanks;
    private readonly int _me;
    private long _nextChunk = 1;
    private long _broadcast; // Broadcasts through this channel so far: the same count on every local member.

    private ShmRing(SharedMemorySegment segment, int[] worldRanks, int me)
    {
        _segment = segment;
        _worldRanks = worldRanks;
        _me = me;
    }

    public static long SegmentSize => HeaderSize + (long)SlotCount * ChunkSize;

    /// <summary>Creates the channel for the local members (world ranks, in local order); <paramref name="me"/> is this process's local index.</summary>
    public static ShmRing Create(string name, int[] worldRanks, int me) => new(SharedMemorySegment.Create(name, SegmentSize), Check(worldRanks), me);

    public static ShmRing Open(string name, int[] worldRanks, int me) => new(SharedMemorySegment.Open(name, SegmentSize), Check(worldRanks), me);

    private static int[] Check(int[] worldRanks) => worldRanks.Length <= MaxMembers
        ? worldRanks
        : throw new ArgumentOutOfRangeException(nameof(worldRanks), $"at most {MaxMembers} ranks per host share a channel");

    public void Unlink() => _segment.Unlink();

    private byte* Base => _segment.Pointer;

    // Per slot, one cache line: the chunk number published in it, then its broadcast's number and length.
    private int* Published(int slot) => (int*)(Base + SlotBase + Line * slot);

    private long* SlotSeq(int slot) => (long*)(Base + SlotBase + Line * slot + 8);

    private long* SlotLength(int slot) => (long*)(Base + SlotBase + Line * slot + 16);

    private int* Acked(int member, int slot) => (int*)(Base + AckBase + Line * (member * SlotCount + slot));

    private int* Done(int member) => (int*)(Base + DoneBase + Line * member);

    // Two boards, used by alternate broadcasts: a board is rewritten only after every member finished the broadcast that used it before.
    private byte* Board(long n) => Base + BoardBase + BoardSize * (n % 2);

    private byte* Slot(int slot) => Base + HeaderSize + (long)slot * ChunkSize;

    /// <summary>Writer: posts the broadcast's descriptor once every member is done with the board's previous use.</summary>
    public void Begin(long seq, long total, Mode mode, string? segment, long offset, in WaitContext wait)
    {
        var n = ++_broadcast;
        var previous = (int)(n - 2);
        for (var m = 0; m < _worldRanks.Length; m++)
        {
            if (m != _me)
            {
                WaitUntil(Done(m), v => v - previous >= 0, wait, _worldRanks[m]);
            }
        }
        var board = Board(n);
        *(long*)(board + 8) = seq;
        *(long*)(board + 16) = total;
        *(long*)(board + 24) = offset;
        *(int*)(board + 32) = (int)mode;
        Volatile.Write(ref *(int*)(board + 64), 0); // Progress, in chunks.
        var name = Encoding.UTF8.GetBytes(segment ?? "");
        if (name.Length > NameCapacity)
        {
            throw new ArgumentException($"segment name '{segment}' is longer than {NameCapacity} bytes", nameof(segment));
        }
        *(int*)(board + 128) = name.Length;
        name.CopyTo(new Span<byte>(board + 132, NameCapacity));
        Volatile.Write(ref *(int*)board, (int)n);
        Futex.WakeAll((int*)board);
    }

    /// <summary>Reader: waits for the descriptor of broadcast <paramref name="seq"/> and checks the writer agrees on its length.</summary>
    public Descriptor Await(long seq, long total, in WaitContext wait, int writerWorldRank)
    {
        var n = ++_broadcast;
        var board = Board(n);
        WaitUntil((int*)board, v => v == (int)n, wait, writerWorldRank);
        var theirs = (Seq: *(long*)(board + 8), Total: *(long*)(board + 16));
        if (theirs.Seq != seq || theirs.Total != total)
        {
            throw wait.Fail($"this rank expects broadcast #{seq} of {total} bytes but rank {writerWorldRank} posted #{theirs.Seq} of {theirs.Total} bytes (members disagree on the call)", writerWorldRank);
        }
        var name = Encoding.UTF8.GetString(board + 132, *(int*)(board + 128));
        return new Descriptor((Mode)(*(int*)(board + 32)), name, *(long*)(board + 24));
    }

    /// <summary>Writer, direct mode: the first <paramref name="chunks"/> chunks of its buffer hold the data.</summary>
    public void Progress(int chunks)
    {
        var word = (int*)(Board(_broadcast) + 64);
        Volatile.Write(ref *word, chunks);
        Futex.WakeAll(word);
    }

    /// <summary>Reader, direct mode: copies from the writer's mapped buffer as far as its progress allows.</summary>
    public void CopyDirect(byte* destination, byte* source, long total, in WaitContext wait, int writerWorldRank)
    {
        var word = (int*)(Board(_broadcast) + 64);
        long copied = 0;
        while (copied < total)
        {
            var chunks = Volatile.Read(ref *word);
            var available = Math.Min(total, (long)chunks * ChunkSize);
            if (available <= copied)
            {
                var have = chunks;
                WaitUntil(word, v => v != have, wait, writerWorldRank);
                continue;
            }
            StreamingCopy.Copy(source + copied, destination + copied, available - copied);
            copied = available;
        }
    }

    /// <summary>Reader, direct mode: copies only <paramref name="runs"/> of the writer's buffer (each once the chunks holding it are posted), packed into <paramref name="destination"/>.</summary>
    public void CopyRunsDirect(byte* destination, byte* source, long total, IReadOnlyList<Memory.ByteRun> runs, in WaitContext wait, int writerWorldRank)
    {
        var word = (int*)(Board(_broadcast) + 64);
        using var copy = new StreamingCopy.Batch(runs.Sum(r => r.Length));
        foreach (var r in runs)
        {
            while (true)
            {
                var chunks = Volatile.Read(ref *word);
                if (Math.Min(total, (long)chunks * ChunkSize) >= r.Source + r.Length)
                {
                    break;
                }
                WaitUntil(word, v => v != chunks, wait, writerWorldRank);
            }
            copy.Copy(source + r.Source, destination + r.Destination, r.Length);
        }
    }

    /// <summary>Every member marks the broadcast finished (readers: copied; writer: posted everything).</summary>
    public void Finish()
    {
        Volatile.Write(ref *Done(_me), (int)_broadcast);
        Futex.WakeAll(Done(_me));
    }

    /// <summary>Writer, direct mode: waits until every reader copied, so the caller may reuse its buffer.</summary>
    public void AwaitReaders(in WaitContext wait)
    {
        var n = (int)_broadcast;
        for (var m = 0; m < _worldRanks.Length; m++)
        {
            if (m != _me)
            {
                WaitUntil(Done(m), v => v - n >= 0, wait, _worldRanks[m]);
            }
        }
    }

    /// <summary>Writer, ring mode: publishes one chunk, tagged with its broadcast's number and length for the readers to check.</summary>
    public void WriteChunk(byte* source, int length, long seq, long total, in WaitContext wait)
    {
        var g = _nextChunk++;
        var slot = (int)(g % SlotCount);
        var previous = (int)(g - SlotCount);
        for (var m = 0; m < _worldRanks.Length; m++)
        {
            if (m != _me)
            {
                WaitUntil(Acked(m, slot), v => v - previous >= 0, wait, _worldRanks[m]);
            }
        }
        *SlotSeq(slot) = seq;
        *SlotLength(slot) = total;
        Buffer.MemoryCopy(source, Slot(slot), ChunkSize, length);
        Volatile.Write(ref *Published(slot), (int)g);
        Futex.WakeAll(Published(slot));
        Volatile.Write(ref *Acked(_me, slot), (int)g);
        Futex.WakeAll(Acked(_me, slot));
    }

    /// <summary>Reader, ring mode: copies out the next chunk after checking the writer agrees on the broadcast.</summary>
    public void ReadChunk(byte* destination, int length, long seq, long total, in WaitContext wait, int writerWorldRank)
    {
        var g = _nextChunk++;
        var slot = (int)(g % SlotCount);
        WaitUntil(Published(slot), v => v == (int)g, wait, writerWorldRank);
        if (*SlotSeq(slot) != seq || *SlotLength(slot) != total)
        {
            throw wait.Fail($"this rank expects broadcast #{seq} of {total} bytes but the writer sent #{*SlotSeq(slot)} of {*SlotLength(slot)} bytes (members disagree on the call)", writerWorldRank);
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
