using System.Collections.Immutable;
using System.Text.Json;

namespace CheckpointEngine.Checkpoints;

/// <summary>The one JSON shape of a tensor entry used by every output: name, dtype, shape, [file,] offset, nbytes.</summary>
internal static class TensorJson
{
    public static void Write(Utf8JsonWriter w, string name, DType dtype, ImmutableArray<long> shape, long offset, long nbytes, string? file = null)
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
        w.WriteEndObject();
    }
}
