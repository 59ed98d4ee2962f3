using System.Collections.Immutable;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Planning;

/// <summary>
/// Every rank's share of a checkpoint, as gathered by all ranks: what each rank holds, where, and
/// how to reach it. Saved as JSON so that instances started later can join (P2P) without the
/// owners doing anything.
/// </summary>
public sealed record GlobalMetas(string Checkpoint, IReadOnlyList<RankMetas> Ranks)
{
    public const int FormatVersion = 1;

    public IEnumerable<ParameterMeta> AllTensors => Ranks.SelectMany(r => r.Buffers).SelectMany(b => b.Metas);

    public long TotalBytes => Ranks.Sum(r => r.TotalBytes);

    public long LargestTensor => AllTensors.Select(m => m.ByteLength).DefaultIfEmpty(0).Max();

    /// <summary>Names must be unique across ranks: two owners of one tensor would make the update ambiguous.</summary>
    public void Validate(string source)
    {
        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var r in Ranks)
        {
            foreach (var m in r.Buffers.SelectMany(b => b.Metas))
            {
                if (!seen.TryAdd(m.Name, r.Rank))
                {
                    throw new CheckpointFormatException(source, $"held by rank {seen[m.Name]} and by rank {r.Rank}", m.Name);
                }
            }
        }
        for (var i = 0; i < Ranks.Count; i++)
        {
            if (Ranks[i].Rank != i)
            {
                throw new CheckpointFormatException(source, $"entry {i} is for rank {Ranks[i].Rank}; ranks must be listed 0..{Ranks.Count - 1}");
            }
        }
    }

    public byte[] ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteNumber("version", FormatVersion);
            w.WriteString("checkpoint", Checkpoint);
            w.WriteStartArray("ranks");
            foreach (var r in Ranks)
            {
                WriteRank(w, r);
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    public void Save(string path)
    {
        var temp = path + ".tmp";
        File.WriteAllBytes(temp, ToJson());
        File.Move(temp, path, overwrite: true); // Readers never see half a file.
    }

    private static void WriteRank(Utf8JsonWriter w, RankMetas r)
    {
        w.WriteStartObject();
        w.WriteNumber("rank", r.Rank);
        w.WriteString("device_id", r.DeviceId);
        w.WriteString("p2p_address", r.P2PAddress);
        w.WriteString("net_device", r.NetDevice);
        w.WriteStartArray("buffers");
        foreach (var b in r.Buffers)
        {
            w.WriteStartObject();
            w.WriteNumber("size", b.Size);
            w.WriteNumber("address", b.Address);
            w.WriteStartArray("tensors");
            foreach (var m in b.Metas)
            {
                TensorJson.Write(w, m.Name, m.DType, m.Shape, m.Offset, m.ByteLength, crc32: m.Crc32);
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>One rank's metas as JSON (what each rank contributes to the all-gather).</summary>
    public static byte[] RankToJson(RankMetas rank)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            WriteRank(w, rank);
        }
        return stream.ToArray();
    }

    public static RankMetas RankFromJson(ReadOnlySpan<byte> json, string source) =>
        Read(json, source, (root, get) => ReadRank(root, "rank", source, get));

    public static GlobalMetas Load(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(path, $"cannot read metas: {e.Message}");
        }
        return Parse(bytes, path);
    }

    /// <summary>Reads metas JSON; every problem names the source and the place in it.</summary>
    public static GlobalMetas Parse(ReadOnlySpan<byte> json, string source) => Read(json, source, (root, get) =>
    {
        var version = get(root, "version", JsonValueKind.Number, "metas").GetInt32();
        if (version != FormatVersion)
        {
            throw new CheckpointFormatException(source, $"metas format version {version}; this build reads version {FormatVersion}");
        }
        var ranks = get(root, "ranks", JsonValueKind.Array, "metas").EnumerateArray().Select((r, i) => ReadRank(r, $"ranks[{i}]", source, get)).ToList();
        var metas = new GlobalMetas(get(root, "checkpoint", JsonValueKind.String, "metas").GetString()!, ranks);
        metas.Validate(source);
        return metas;
    });

    private delegate JsonElement Getter(JsonElement parent, string name, JsonValueKind kind, string where);

    private static T Read<T>(ReadOnlySpan<byte> json, string source, Func<JsonElement, Getter, T> read)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.ToArray());
            return read(doc.RootElement, Get);
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(source, $"metas are not valid JSON: {e.Message.Split(". ")[0]}");
        }
        catch (FormatException e)
        {
            throw new CheckpointFormatException(source, $"metas hold a number out of range: {e.Message}");
        }

        JsonElement Get(JsonElement parent, string name, JsonValueKind kind, string where) =>
            parent.ValueKind == JsonValueKind.Object && parent.TryGetProperty(name, out var v) && v.ValueKind == kind
                ? v
                : throw new CheckpointFormatException(source, $"{where}: '{name}' is missing or not a JSON {kind.ToString().ToLowerInvariant()}");
    }

    private static RankMetas ReadRank(JsonElement r, string where, string source, Getter get)
    {
        var buffers = new List<BufferMeta>();
        foreach (var b in get(r, "buffers", JsonValueKind.Array, where).EnumerateArray())
        {
            var bwhere = $"{where}.buffers[{buffers.Count}]";
            var size = get(b, "size", JsonValueKind.Number, bwhere).GetInt64();
            var metas = new List<ParameterMeta>();
            foreach (var t in get(b, "tensors", JsonValueKind.Array, bwhere).EnumerateArray())
            {
                var twhere = $"{bwhere}.tensors[{metas.Count}]";
                var name = get(t, "name", JsonValueKind.String, twhere).GetString()!;
                var dtypeName = get(t, "dtype", JsonValueKind.String, twhere).GetString()!;
                if (!DTypes.TryParse(dtypeName, out var dtype))
                {
                    throw new CheckpointFormatException(source, $"{twhere}: unknown dtype '{dtypeName}'", name);
                }
                var shape = get(t, "shape", JsonValueKind.Array, twhere).EnumerateArray().Select(d => d.GetInt64()).ToImmutableArray();
                var offset = get(t, "offset", JsonValueKind.Number, twhere).GetInt64();
                var nbytes = get(t, "nbytes", JsonValueKind.Number, twhere).GetInt64();
                if (!dtype.TryByteLength(shape.AsSpan(), out var expected, out var why) || expected != nbytes || offset < 0 || offset > size - nbytes)
                {
                    throw new CheckpointFormatException(source, $"{twhere}: {why ?? $"nbytes {nbytes} at offset {offset} does not fit dtype {dtype}, shape [{string.Join(", ", shape)}] in a {size}-byte buffer"}", name);
                }
                uint? crc32 = null;
                if (t.TryGetProperty("crc32", out var c))
                {
                    crc32 = TensorChecksum.TryParseHex(c.ValueKind == JsonValueKind.String ? c.GetString() : null, out var crc)
                        ? crc
                        : throw new CheckpointFormatException(source, $"{twhere}: 'crc32' must be 8 hex digits, not {c.GetRawText()}", name);
                }
                metas.Add(new ParameterMeta(name, dtype, shape, offset, nbytes) { Crc32 = crc32 });
            }
            buffers.Add(new BufferMeta(size, get(b, "address", JsonValueKind.Number, bwhere).GetInt64(), metas));
        }
        // Optional: absent or null in metas of ranks without a P2P store or network device.
        string? Optional(string name) => !r.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
            : v.ValueKind == JsonValueKind.String ? v.GetString()
            : throw new CheckpointFormatException(source, $"{where}: '{name}' is not a JSON string or null");
        return new RankMetas(get(r, "rank", JsonValueKind.Number, where).GetInt32(), get(r, "device_id", JsonValueKind.String, where).GetString()!,
            Optional("p2p_address"), buffers, Optional("net_device"));
    }
}
