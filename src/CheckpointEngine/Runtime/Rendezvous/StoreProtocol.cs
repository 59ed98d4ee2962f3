using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace CheckpointEngine.Runtime.Rendezvous;

/// <summary>
/// The rendezvous store's wire format: frames of a 4-byte little-endian length and a payload. A
/// request payload is an op byte and its fields; a reply is a status byte and its fields. Fields are
/// little-endian integers, and strings or byte strings prefixed by a 4-byte length.
/// </summary>
internal static class StoreProtocol
{
    public const int MaxFrame = 64 << 20;

    /// <summary>Requests, after the connection's <see cref="Security.Handshake"/>.</summary>
    public enum Op : byte
    {
        Set = 2,
        Get,
        WaitGet,
        Add,
        CompareAndSet,
        Delete,
        DeletePrefix,
        WatchDead,
        Bye,

        /// <summary>One member's turn of an all-gather in one round trip: set its key, wait for every member's, then drop its key of the previous call.</summary>
        Gather,
    }

    public enum Status : byte
    {
        Ok = 0,
        NotFound,
        Timeout,
        Error,
        PeerDead,
    }

    /// <summary>Reads one frame of at most <paramref name="maxLength"/> bytes; null on a clean end of stream before the first byte.</summary>
    public static async Task<byte[]?> ReadFrameAsync(Stream stream, CancellationToken ct, int maxLength = MaxFrame)
    {
        var prefix = new byte[4];
        var got = await stream.ReadAtLeastAsync(prefix, 4, throwOnEndOfStream: false, ct).ConfigureAwait(false);
        if (got == 0)
        {
            return null;
        }
        if (got < 4)
        {
            throw new InvalidDataException("connection closed inside a frame length");
        }
        var length = BinaryPrimitives.ReadInt32LittleEndian(prefix);
        if (length < 1 || length > maxLength)
        {
            throw new InvalidDataException($"frame length {length} is outside [1, {maxLength}]");
        }
        var payload = new byte[length];
        await stream.ReadExactlyAsync(payload, ct).ConfigureAwait(false);
        return payload;
    }

    /// <summary>Builds one frame.</summary>
    public sealed class Writer
    {
        private readonly ArrayBufferWriter<byte> _buffer = new();

        public Writer()
        {
            _buffer.GetSpan(4);
            _buffer.Advance(4);
        }

        public Writer Byte(byte value)
        {
            _buffer.GetSpan(1)[0] = value;
            _buffer.Advance(1);
            return this;
        }

        public Writer Int32(int value)
        {
            BinaryPrimitives.WriteInt32LittleEndian(_buffer.GetSpan(4), value);
            _buffer.Advance(4);
            return this;
        }

        public Writer Int64(long value)
        {
            BinaryPrimitives.WriteInt64LittleEndian(_buffer.GetSpan(8), value);
            _buffer.Advance(8);
            return this;
        }

        public Writer Bytes(ReadOnlySpan<byte> value)
        {
            Int32(value.Length);
            _buffer.Write(value);
            return this;
        }

        public Writer String(string value) => Bytes(Encoding.UTF8.GetBytes(value));

        public ReadOnlyMemory<byte> ToFrame()
        {
            var memory = _buffer.WrittenMemory;
            var length = memory.Length - 4;
            if (length > MaxFrame)
            {
                throw new InvalidOperationException($"frame of {length} bytes exceeds the {MaxFrame}-byte limit");
            }
            BinaryPrimitives.WriteInt32LittleEndian(MemoryMarshal.AsMemory(memory).Span, length);
            return memory;
        }
    }

    /// <summary>Reads the fields of one frame payload; a short payload is a protocol error.</summary>
    public ref struct Reader(ReadOnlySpan<byte> payload)
    {
        private ReadOnlySpan<byte> _rest = payload;

        public readonly bool AtEnd => _rest.IsEmpty;

        private ReadOnlySpan<byte> Take(int n)
        {
            if (n < 0 || n > _rest.Length)
            {
                throw new InvalidDataException($"frame ends early: need {n} more bytes, {_rest.Length} left");
            }
            var head = _rest[..n];
            _rest = _rest[n..];
            return head;
        }

        public byte Byte() => Take(1)[0];

        public int Int32() => BinaryPrimitives.ReadInt32LittleEndian(Take(4));

        /// <summary>A count of the items that follow, each at least <paramref name="minBytesEach"/> bytes: checked against what is left, so a bad count never sizes an allocation.</summary>
        public int Count(int minBytesEach)
        {
            var n = Int32();
            if (n < 0 || (long)n * minBytesEach > _rest.Length)
            {
                throw new InvalidDataException($"count {n} does not fit the {_rest.Length} bytes left in the frame");
            }
            return n;
        }

        public long Int64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));

        public byte[] Bytes() => Take(Int32()).ToArray();

        public string String() => Encoding.UTF8.GetString(Take(Int32()));
    }
}
