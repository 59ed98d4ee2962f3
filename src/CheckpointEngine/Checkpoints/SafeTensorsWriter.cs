using System.Buffers.Binary;
using System.Text.Json;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// Writes safetensors files that any reader accepts. Tensors are laid out by descending alignment,
/// then by name, and the header is padded with spaces to a multiple of 8 bytes, so every tensor is
/// naturally aligned in the file (what in-place registration of tmpfs files relies on).
/// </summary>
public static class SafeTensorsWriter
{
    public static void Write(string path, IEnumerable<TensorToWrite> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var ordered = tensors
            .OrderByDescending(t => t.DType.Alignment())
            .ThenBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
        var duplicate = ordered.GroupBy(t => t.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new ArgumentException($"tensor '{duplicate.Key}' is given twice", nameof(tensors));
        }
        if (ordered.Any(t => t.Name == SafeTensorsHeader.MetadataKey))
        {
            throw new ArgumentException($"'{SafeTensorsHeader.MetadataKey}' is reserved for metadata and cannot name a tensor", nameof(tensors));
        }
        var header = BuildHeader(ordered, metadata);
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> prefix = stackalloc byte[SafeTensorsHeader.LengthPrefixSize];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        file.Write(prefix);
        file.Write(header);
        foreach (var t in ordered)
        {
            var start = file.Position;
            t.WriteData(file);
            if (file.Position - start != t.ByteLength)
            {
                throw new InvalidOperationException(
                    $"tensor '{t.Name}' wrote {file.Position - start} bytes, its dtype and shape need {t.ByteLength}");
            }
        }
    }

    private static byte[] BuildHeader(List<TensorToWrite> ordered, IReadOnlyDictionary<string, string>? metadata)
    {
        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json))
        {
            w.WriteStartObject();
            if (metadata is not null)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    w.WriteString(k, v);
                }
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in ordered)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType.Name());
                w.WriteStartArray("shape");
                foreach (var d in t.Shape)
                {
                    w.WriteNumberValue(d);
                }
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.ByteLength);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.ByteLength;
            }
            w.WriteEndObject();
        }
        var padding = (int)((8 - json.Length % 8) % 8);
        for (var i = 0; i < padding; i++)
        {
            json.WriteByte((byte)' ');
        }
        return json.ToArray();
    }
}
