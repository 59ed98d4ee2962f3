using System.Collections.Immutable;
using System.Text.Json;

namespace CheckpointEngine.Checkpoints;

/// <summary>The one JSON shape of a tensor entry used by every output: name, dtype, shape, [file,] offset, nbytes[, crc32 as 8 hex digits].</summary>
internal static class TensorJson
{
    public static void Write(Utf8JsonWriter w, string name, DType dtype, ImmutableArray<long> shape, long offset, long nbytes, string? file = null, uint? crc32 = null)
    {
        w.WriteStartObject();
        w.WriteString("name", name);
        w.WriteString("dtype", dtype.Name());
        w.WriteStartArray("shape");
        foreach (var d in shape)
        {
            w.WriteNumberValue(d);
        }
        w.WriteEndArray();
        if (file is not null)
        {
            w.WriteString("file", file);
        }
        w.WriteNumber("offset", offset);
        w.WriteNumber("nbytes", nbytes);
        if (crc32 is { } crc)
        {
            w.WriteString("crc32", Worker.TensorChecksum.Hex(crc));
        }
        w.WriteEndObject();
    }
}
