using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Simulation.Models;

/// <summary>Every tensor of a checkpoint, sorted by name (names, dtypes, shapes; no data).</summary>
public sealed class ModelInventory
{
    public ModelInventory(string name, IEnumerable<TensorSpec> tensors)
    {
        Name = name;
        Tensors = [.. tensors.OrderBy(t => t.Name, StringComparer.Ordinal)];
        TotalBytes = Tensors.Sum(t => t.ByteLength);
        ParameterCount = Tensors.Sum(t => t.ElementCount);
        LargestTensor = Tensors.Count == 0 ? 0 : Tensors.Max(t => t.ByteLength);
    }

    public string Name { get; }

    public IReadOnlyList<TensorSpec> Tensors { get; }

    public long TotalBytes { get; }

    /// <summary>Elements of every tensor, block scales included (what a safetensors parameter count reports).</summary>
    public long ParameterCount { get; }

    public long LargestTensor { get; }

    /// <summary>Elements of the tensors <paramref name="include"/> selects, e.g. the main model without its MTP layer.</summary>
    public long CountParameters(Func<string, bool> include) => Tensors.Where(t => include(t.Name)).Sum(t => t.ElementCount);

    /// <summary>The inventory of a checkpoint on disk: a directory (with or without an index), an index file or safetensors files; only headers are read.</summary>
    public static ModelInventory FromCheckpoint(string path)
    {
        using var checkpoint = Checkpoint.Open(path);
        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(path)));
        return new ModelInventory(name, checkpoint.AllTensors().Select(e => new TensorSpec(e.Tensor.Name, e.Tensor.DType, e.Tensor.Shape, e.Tensor.ByteLength)));
    }
}
