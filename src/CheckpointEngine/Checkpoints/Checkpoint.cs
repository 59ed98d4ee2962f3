namespace CheckpointEngine.Checkpoints;

/// <summary>
/// A checkpoint made of one or more safetensors files: given files, directories with a
/// <c>*.safetensors.index.json</c> (only the files it names), or plain directories of
/// <c>*.safetensors</c>. Tensor names are unique across all files.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, (SafeTensorsFile File, TensorInfo Tensor)> _tensors;

    private Checkpoint(List<SafeTensorsFile> files, Dictionary<string, (SafeTensorsFile, TensorInfo)> tensors, string? indexPath)
    {
        Files = files;
        _tensors = tensors;
        IndexPath = indexPath;
    }

    public IReadOnlyList<SafeTensorsFile> Files { get; }

    /// <summary>The index file the checkpoint was resolved through, if any.</summary>
    public string? IndexPath { get; }

    public int TensorCount => _tensors.Count;

    public long TotalBytes => Files.Sum(f => f.DataLength);

    public bool TryGetTensor(string name, out SafeTensorsFile file, out TensorInfo tensor)
    {
        var found = _tensors.TryGetValue(name, out var entry);
        (file, tensor) = entry;
        return found;
    }

    /// <summary>Opens every file of the given paths and checks names are unique across files.</summary>
    public static Checkpoint Open(params IEnumerable<string> paths)
    {
        var (filePaths, index) = ResolvePaths(paths);
        var files = new List<SafeTensorsFile>();
        try
        {
            foreach (var path in filePaths)
            {
                files.Add(SafeTensorsFile.Open(path));
            }
            var tensors = new Dictionary<string, (SafeTensorsFile, TensorInfo)>(StringComparer.Ordinal);
            foreach (var file in files)
            {
                foreach (var t in file.Tensors)
                {
                    if (!tensors.TryAdd(t.Name, (file, t)))
                    {
                        throw new CheckpointFormatException(file.Path, $"tensor is also in {tensors[t.Name].Item1.Path}", t.Name);
                    }
                }
            }
            if (index is not null)
            {
                CheckIndex(index, tensors);
            }
            return new Checkpoint(files, tensors, index?.Path);
        }
        catch
        {
            files.ForEach(f => f.Dispose());
            throw;
        }
    }

    /// <summary>Expands directories into their safetensors files, de-duplicated, in a stable order.</summary>
    public static IReadOnlyList<string> ResolveFiles(params IEnumerable<string> paths) => ResolvePaths(paths).Files;

    private static (List<string> Files, CheckpointIndex? Index) ResolvePaths(IEnumerable<string> paths)
    {
        var result = new List<string>();
        CheckpointIndex? index = null;
        foreach (var path in paths)
        {
            if (Directory.Exists(path))
            {
                var indexPath = FindIndex(path);
                if (indexPath is not null)
                {
                    if (index is not null)
                    {
                        throw new CheckpointFormatException(indexPath, $"a second index; only one indexed directory may be given (first: {index.Path})");
                    }
                    index = CheckpointIndex.Load(indexPath);
                    result.AddRange(index.Files);
                }
                else
                {
                    var found = Directory.GetFiles(path, "*.safetensors").Order(StringComparer.Ordinal).ToList();
                    if (found.Count == 0)
                    {
                        throw new CheckpointFormatException(path, "directory holds no *.safetensors files and no index");
                    }
                    result.AddRange(found);
                }
            }
            else if (File.Exists(path))
            {
                result.Add(path);
            }
            else
            {
                throw new CheckpointFormatException(path, "no such file or directory");
            }
        }
        if (result.Count == 0)
        {
            throw new ArgumentException("no checkpoint paths given", nameof(paths));
        }
        // The same file reached two ways (d/a and d//a, a folder and one of its files) is read once.
        return (result.DistinctBy(Path.GetFullPath, StringComparer.Ordinal).ToList(), index);
    }

    private static string? FindIndex(string directory)
    {
        var preferred = Path.Combine(directory, IndexFileName);
        if (File.Exists(preferred))
        {
            return preferred;
        }
        var others = Directory.GetFiles(directory, "*.safetensors.index.json");
        return others.Length switch
        {
            0 => null,
            1 => others[0],
            _ => throw new CheckpointFormatException(directory, $"several index files and none named {IndexFileName}: {string.Join(", ", others.Select(Path.GetFileName))}"),
        };
    }

    /// <summary>The index and the files it names must agree exactly; files given besides the indexed directory are not its business.</summary>
    private static void CheckIndex(CheckpointIndex index, Dictionary<string, (SafeTensorsFile File, TensorInfo Tensor)> tensors)
    {
        var indexed = index.Files.Select(Path.GetFullPath).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, file) in index.WeightMap)
        {
            if (!tensors.TryGetValue(name, out var entry))
            {
                throw new CheckpointFormatException(index.Path, $"listed in weight_map under {Path.GetFileName(file)} but no file holds it", name);
            }
            if (!string.Equals(Path.GetFullPath(entry.File.Path), Path.GetFullPath(file), StringComparison.Ordinal))
            {
                throw new CheckpointFormatException(index.Path, $"weight_map says {Path.GetFileName(file)} but the tensor is in {Path.GetFileName(entry.File.Path)}", name);
            }
        }
        foreach (var (name, entry) in tensors.Where(t => indexed.Contains(Path.GetFullPath(t.Value.File.Path))))
        {
            if (!index.WeightMap.ContainsKey(name))
            {
                throw new CheckpointFormatException(index.Path, $"in {Path.GetFileName(entry.File.Path)} but not listed in weight_map", name);
            }
        }
    }

    /// <summary>Every tensor with its file, ordered by name.</summary>
    public IEnumerable<(SafeTensorsFile File, TensorInfo Tensor)> AllTensors() =>
        _tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Value);

    public void Dispose()
    {
        foreach (var f in Files)
        {
            f.Dispose();
        }
    }
}
