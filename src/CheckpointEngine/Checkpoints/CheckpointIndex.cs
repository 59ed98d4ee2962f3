using System.Text.Json;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// A sharded checkpoint's <c>*.safetensors.index.json</c>: <c>weight_map</c> from tensor name to the
/// file (relative to the index's directory) that holds it.
/// </summary>
public sealed class CheckpointIndex
{
    private CheckpointIndex(string path, Dictionary<string, string> weightMap, List<string> files)
    {
        Path = path;
        WeightMap = weightMap;
        Files = files;
    }

    public string Path { get; }

    /// <summary>Tensor name → full path of the file holding it.</summary>
    public IReadOnlyDictionary<string, string> WeightMap { get; }

    /// <summary>The distinct files named by the weight map, in ordinal order.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>Largest index read; a trillion-parameter model's is a few MiB.</summary>
    private const long MaxIndexBytes = 256 << 20;

    public static CheckpointIndex Load(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(RegularFile.ReadAllBytes(path, MaxIndexBytes)); // Not a FIFO: that would hang.
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(path, $"index is not valid JSON: {e.Message.Split(". ")[0]}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(path, $"cannot read index: {e.Message}");
        }
        using (doc)
        {
            try
            {
                return Read(path, doc.RootElement);
            }
            catch (InvalidOperationException e)
            {
                // Names and values are decoded lazily; an escape such as a lone "\uD800" fails here, not in Parse.
                throw new CheckpointFormatException(path, $"index is not valid text: {e.Message.Split(". ")[0]}");
            }
        }
    }

    private static CheckpointIndex Read(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(path, "index is not a JSON object");
        }
        if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(path, "index has no 'weight_map' object");
        }
        var directory = System.IO.Path.GetDirectoryName(path) ?? "";
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in map.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw new CheckpointFormatException(path, "weight_map value is not a file name", entry.Name);
            }
            var file = entry.Value.GetString()!;
            if (file.Length == 0 || System.IO.Path.IsPathRooted(file) || file.Split('/', '\\').Contains(".."))
            {
                throw new CheckpointFormatException(path, $"weight_map names '{file}', which is not a file inside the checkpoint directory", entry.Name);
            }
            if (!weightMap.TryAdd(entry.Name, System.IO.Path.Combine(directory, file)))
            {
                throw new CheckpointFormatException(path, "listed twice in weight_map", entry.Name);
            }
        }
        if (weightMap.Count == 0)
        {
            throw new CheckpointFormatException(path, "weight_map is empty");
        }
        var files = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        var missing = files.FirstOrDefault(f => !File.Exists(f));
        if (missing is not null)
        {
            throw new CheckpointFormatException(path, $"weight_map names {System.IO.Path.GetFileName(missing)}, which does not exist");
        }
        return new CheckpointIndex(path, weightMap, files);
    }
}
