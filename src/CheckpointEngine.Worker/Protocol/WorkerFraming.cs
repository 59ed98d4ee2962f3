using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace CheckpointEngine.Worker;

/// <summary>
/// Frames of the worker protocol: a 4-byte little-endian length, then that many bytes of UTF-8 JSON.
/// A malformed frame is an <see cref="InvalidDataException"/> that says what was wrong.
/// </summary>
public static class WorkerFraming
{
    public const int MaxFrame = 64 << 20;

    // Lenient where other languages differ harmlessly ("type" need not come first), strict where a
    // missing field would otherwise turn into a silent default (a load without "tensors").
    private static readonly JsonSerializerOptions Options = new()
    {
        AllowOutOfOrderMetadataProperties = true,
        RespectNullableAnnotations = true,
        RespectRequiredConstructorParameters = true,
        TypeInfoResolver = JsonTypeInfoResolver.Combine(WorkerJson.Default, new DefaultJsonTypeInfoResolver()),
    };

    public static async Task WriteAsync<T>(Stream stream, T message, CancellationToken ct = default)
    {
        await stream.WriteAsync(Encode(message), ct).ConfigureAwait(false);
        await stream.FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// One whole frame (length prefix included). Any <see cref="WorkerMessage"/> is written through the
    /// base type, so the "type" field is there even when <typeparamref name="T"/> is a derived record.
    /// </summary>
    public static byte[] Encode<T>(T message)
    {
        var json = message is WorkerMessage m
            ? JsonSerializer.SerializeToUtf8Bytes(m, Options)
            : JsonSerializer.SerializeToUtf8Bytes(message, Options);
        return Frame(json, typeof(T).Name);
    }

    /// <summary>A whole frame around JSON already encoded.</summary>
    public static byte[] Frame(byte[] json, string what = "message")
    {
        if (json.Length > MaxFrame)
        {
            throw new InvalidDataException($"{what} of {json.Length} bytes is over the {MaxFrame}-byte frame limit");
        }
        var frame = new byte[4 + json.Length];
        BinaryPrimitives.WriteInt32LittleEndian(frame, json.Length);
        json.CopyTo(frame, 4);
        return frame;
    }

    /// <summary>
    /// Encodes and decodes one of every frame once. The first (de)serialization of the message types in a process sets up their
    /// JSON contracts and loads their types (10–15 ms each way on a small machine, even generated at compile time); a process that
    /// calls this when it starts (the parameter server does, on a pool thread) does not pay that inside its first update.
    /// </summary>
    public static void Prime()
    {
        WorkerMessage[] messages =
        [
            new AttachMessage("shm", "prime", 1, "prime", [new SegmentRef("prime", 1)]),
            new LoadMessage(0, [new WireTensor("prime", "BF16", [1, 2], 0, 4, Crc32: "00000000", Part: new TensorPart(1, [[0, 1]], [1, 2]), Segment: 1, Pitch: 4)]),
            new ReleaseMessage(), new FinishMessage(), new AbortMessage("prime"),
        ];
        foreach (var m in messages)
        {
            _ = Decode<WorkerMessage>(Encode(m).AsSpan(4));
        }
        _ = Decode<WorkerReply>(Encode(new WorkerReply(false, "prime")).AsSpan(4));
        _ = Decode<WorkerHello>(Encode(new WorkerHello(new string('0', WorkerTicket.SessionLength), Wants: true)).AsSpan(4));
    }

    /// <summary>Reads one message; null when the peer closed the connection between frames.</summary>
    public static async Task<T?> ReadAsync<T>(Stream stream, CancellationToken ct = default) where T : class
    {
        var json = await ReadFrameAsync(stream, ct).ConfigureAwait(false);
        return json is null ? null : Decode<T>(json);
    }

    /// <summary>
    /// Reads one frame's JSON bytes; null when the peer closed the connection between frames. A bad
    /// length or a connection closed inside a frame leaves the stream out of step: the caller must
    /// drop the connection. A frame read whole keeps it in step even if <see cref="Decode{T}"/> then fails.
    /// </summary>
    public static Task<byte[]?> ReadFrameAsync(Stream stream, CancellationToken ct = default) => ReadFrameAsync(stream, MaxFrame, ct);

    /// <param name="maxFrame">The longest frame accepted (a peer not yet authenticated gets only a few KiB).</param>
    public static async Task<byte[]?> ReadFrameAsync(Stream stream, int maxFrame, CancellationToken ct)
    {
        var prefix = new byte[4];
        var got = await stream.ReadAtLeastAsync(prefix, 4, throwOnEndOfStream: false, ct).ConfigureAwait(false);
        if (got == 0)
        {
            return null;
        }
        if (got < 4)
        {
            throw new InvalidDataException($"connection closed inside a frame length ({got} of 4 bytes)");
        }
        var length = BinaryPrimitives.ReadInt32LittleEndian(prefix);
        if (length < 2 || length > maxFrame)
        {
            throw new InvalidDataException($"frame length {length} is outside [2, {maxFrame}]");
        }
        var json = new byte[length];
        var read = await stream.ReadAtLeastAsync(json, length, throwOnEndOfStream: false, ct).ConfigureAwait(false);
        if (read < length)
        {
            throw new InvalidDataException($"connection closed inside a frame ({read} of {length} bytes)");
        }
        return json;
    }

    /// <summary>Parses a frame's JSON; <see cref="InvalidDataException"/> names the JSON path of the problem.</summary>
    public static T Decode<T>(ReadOnlySpan<byte> json) where T : class
    {
        try
        {
            return JsonSerializer.Deserialize<T>(json, Options) ?? throw new InvalidDataException("frame holds JSON null");
        }
        catch (Exception e) when (e is JsonException or NotSupportedException)
        {
            throw new InvalidDataException($"frame of {json.Length} bytes is not a valid {typeof(T).Name}: {Describe(e)}", e);
        }
    }

    private static string Describe(Exception e)
    {
        // STJ messages end in " Path: $.x | LineNumber: ..."; keep the first sentence and the path.
        var text = e.Message.Replace(typeof(WorkerFraming).Namespace + ".", "", StringComparison.Ordinal);
        var cut = text.IndexOf(". ", StringComparison.Ordinal);
        var first = (cut >= 0 ? text[..cut] : text).TrimEnd('.');
        var path = (e as JsonException)?.Path;
        return path is { Length: > 1 } ? $"{first} (at {path})" : first;
    }
}
