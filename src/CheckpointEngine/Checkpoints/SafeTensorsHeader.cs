using System.Collections.Immutable;
using System.Text.Json;
using System.Text.Unicode;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// The parsed and validated JSON header of a safetensors file. Parsing is strict: every tensor must
/// have a known dtype, a non-negative shape, and data offsets that tile the data section exactly
/// (no holes, no overlaps, nothing past the end).
/// </summary>
public sealed class SafeTensorsHeader
{
    /// <summary>Largest header accepted, as in the reference implementation.</summary>
    public const long MaxHeaderLength = 100_000_000;

    /// <summary>Bytes before the JSON header: its length as a little-endian u64.</summary>
    public const int LengthPrefixSize = 8;

    /// <summary>The header key of the free-form string map; never a tensor name.</summary>
    internal const string MetadataKey = "__metadata__";

    private readonly Dictionary<string, TensorInfo> _byName;

    private SafeTensorsHeader(List<TensorInfo> tensors, Dictionary<string, string>? metadata, long headerLength)
    {
        Tensors = tensors;
        Metadata = metadata;
        HeaderLength = headerLength;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>Tensors in data-section order (by offset).</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>The free-form string map under <c>__metadata__</c>, or null when absent.</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; }

    /// <summary>Length of the JSON header in bytes (without the 8-byte prefix).</summary>
    public long HeaderLength { get; }

    /// <summary>Offset of the data section from the start of the file.</summary>
    public long DataStart => LengthPrefixSize + HeaderLength;

    public bool TryGetTensor(string name, out TensorInfo tensor) => _byName.TryGetValue(name, out tensor!);

    /// <summary>Parses header JSON and validates it against a data section of <paramref name="dataLength"/> bytes.</summary>
    /// <param name="json">The header bytes (UTF-8 JSON, possibly padded with trailing spaces).</param>
    /// <param name="dataLength">Bytes in the file after the header.</param>
    /// <param name="source">Name of the file, used in every error message.</param>
    public static SafeTensorsHeader Parse(ReadOnlySpan<byte> json, long dataLength, string source)
    {
        if (!Utf8.IsValid(json))
        {
            throw new CheckpointFormatException(source, "header is not valid UTF-8");
        }
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = 16 });
        var tensors = new List<TensorInfo>();
        Dictionary<string, string>? metadata = null;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                throw Error(source, "header is not a JSON object", LengthPrefixSize + reader.TokenStartIndex);
            }
            while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
            {
                var name = reader.GetString()!;
                var at = LengthPrefixSize + reader.TokenStartIndex;
                if (!seen.Add(name))
                {
                    throw new CheckpointFormatException(source, "duplicate name in header", name, at);
                }
                reader.Read();
                if (name == MetadataKey)
                {
                    metadata = ReadMetadata(ref reader, source);
                }
                else
                {
                    tensors.Add(ReadTensor(ref reader, name, source));
                }
            }
            // Anything after the closing brace other than whitespace makes the reader throw here (one root value only).
            reader.Read();
        }
        catch (JsonException e)
        {
            // BytePositionInLine counts from the last newline, so it is a file offset only on the first line.
            var at = e.LineNumber == 0 && e.BytePositionInLine is { } b ? LengthPrefixSize + (long)b : (long?)null;
            // Not the parser's text: it quotes the offending character, and the file may not be a checkpoint at all.
            throw new CheckpointFormatException(source, "header is not valid JSON", offset: at);
        }
        catch (InvalidOperationException)
        {
            // GetString throws this (not JsonException) for escapes that decode to invalid UTF-16, e.g. a lone "\uD800".
            throw new CheckpointFormatException(source, "header is not valid text (an escape decodes to invalid UTF-16)");
        }
        Validate(tensors, dataLength, source);
        return new SafeTensorsHeader(tensors, metadata, json.Length);
    }

    private static Dictionary<string, string> ReadMetadata(ref Utf8JsonReader reader, string source)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw Error(source, $"{MetadataKey} is not an object of strings", LengthPrefixSize + reader.TokenStartIndex);
        }
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var key = reader.GetString()!;
            reader.Read();
            if (reader.TokenType != JsonTokenType.String)
            {
                throw Error(source, $"{MetadataKey} value for '{key}' is not a string", LengthPrefixSize + reader.TokenStartIndex);
            }
            if (!map.TryAdd(key, reader.GetString()!))
            {
                throw Error(source, $"{MetadataKey} has duplicate key '{key}'", LengthPrefixSize + reader.TokenStartIndex);
            }
        }
        return map;
    }

    private static TensorInfo ReadTensor(ref Utf8JsonReader reader, string name, string source)
    {
        var entryAt = LengthPrefixSize + reader.TokenStartIndex;
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new CheckpointFormatException(source, "entry is not an object", name, entryAt);
        }
        DType? dtype = null;
        long[]? shape = null;
        long[]? offsets = null;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var field = reader.GetString();
            reader.Read();
            var at = LengthPrefixSize + reader.TokenStartIndex;
            if ((field == "dtype" && dtype is not null) || (field == "shape" && shape is not null) || (field == "data_offsets" && offsets is not null))
            {
                // Readers disagree on which copy wins (the reference reader rejects the file), so accept neither.
                throw new CheckpointFormatException(source, $"'{field}' is given twice", name, at);
            }
            switch (field)
            {
                case "dtype":
                    if (reader.TokenType != JsonTokenType.String)
                    {
                        throw new CheckpointFormatException(source, "dtype is not a string", name, at);
                    }
                    var text = reader.GetString()!;
                    dtype = DTypes.TryParse(text, out var d)
                        ? d
                        : throw new CheckpointFormatException(source, $"unknown dtype '{text}'", name, at);
                    break;
                case "shape":
                    shape = ReadIntegers(ref reader, name, "shape", source);
                    break;
                case "data_offsets":
                    offsets = ReadIntegers(ref reader, name, "data_offsets", source);
                    if (offsets.Length != 2)
                    {
                        throw new CheckpointFormatException(source, $"data_offsets has {offsets.Length} numbers, expected [begin, end]", name, at);
                    }
                    break;
                default:
                    reader.Skip(); // Unknown fields are ignored, as by the reference reader.
                    break;
            }
        }
        if (dtype is null || shape is null || offsets is null)
        {
            var missing = dtype is null ? "dtype" : shape is null ? "shape" : "data_offsets";
            throw new CheckpointFormatException(source, $"entry has no '{missing}'", name, entryAt);
        }
        if (!dtype.Value.TryByteLength(shape, out var expected, out var why))
        {
            throw new CheckpointFormatException(source, $"{why} (dtype {dtype}, shape [{string.Join(", ", shape)}])", name, entryAt);
        }
        var (begin, end) = (offsets[0], offsets[1]);
        if (end < begin)
        {
            throw new CheckpointFormatException(source, $"data_offsets are reversed: [{begin}, {end}]", name, entryAt);
        }
        if (end - begin != expected)
        {
            throw new CheckpointFormatException(source,
                $"byte length {end - begin} (data_offsets [{begin}, {end}]) is not shape × dtype size = {expected} (dtype {dtype}, shape [{string.Join(", ", shape)}])",
                name, entryAt);
        }
        return new TensorInfo(name, dtype.Value, [.. shape], begin, end - begin);
    }

    private static long[] ReadIntegers(ref Utf8JsonReader reader, string name, string field, string source)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new CheckpointFormatException(source, $"{field} is not an array", name, LengthPrefixSize + reader.TokenStartIndex);
        }
        var values = new List<long>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            var at = LengthPrefixSize + reader.TokenStartIndex;
            if (reader.TokenType != JsonTokenType.Number)
            {
                throw new CheckpointFormatException(source, $"{field} holds a non-number", name, at);
            }
            if (!reader.TryGetInt64(out var v))
            {
                throw new CheckpointFormatException(source, $"{field} holds {System.Text.Encoding.UTF8.GetString(reader.ValueSpan)}, not a 64-bit integer", name, at);
            }
            if (v < 0)
            {
                throw new CheckpointFormatException(source, $"{field} holds a negative number ({v})", name, at);
            }
            values.Add(v);
        }
        return [.. values];
    }

    /// <summary>The data offsets must tile [0, dataLength) exactly: sorted by begin, each starts where the previous ended.</summary>
    private static void Validate(List<TensorInfo> tensors, long dataLength, string source)
    {
        tensors.Sort((a, b) => a.DataOffset != b.DataOffset
            ? a.DataOffset.CompareTo(b.DataOffset)
            : a.ByteLength.CompareTo(b.ByteLength));
        long expected = 0;
        TensorInfo? previous = null;
        foreach (var t in tensors)
        {
            var end = t.DataOffset + t.ByteLength;
            if (end > dataLength)
            {
                throw new CheckpointFormatException(source,
                    $"data_offsets [{t.DataOffset}, {end}] run past the end of the data section ({dataLength} bytes)", t.Name);
            }
            if (t.DataOffset < expected)
            {
                throw new CheckpointFormatException(source,
                    $"data_offsets [{t.DataOffset}, {end}] overlap tensor '{previous!.Name}' which ends at {expected}", t.Name);
            }
            if (t.DataOffset > expected)
            {
                throw new CheckpointFormatException(source,
                    $"hole of {t.DataOffset - expected} bytes in the data section before this tensor (previous data ends at {expected})", t.Name);
            }
            expected = end;
            previous = t;
        }
        if (expected != dataLength)
        {
            throw new CheckpointFormatException(source,
                $"{dataLength - expected} bytes at the end of the data section belong to no tensor (tensors end at {expected}, data section is {dataLength} bytes)");
        }
    }

    private static CheckpointFormatException Error(string source, string problem, long offset) => new(source, problem, offset: offset);
}
