namespace CheckpointEngine.Checkpoints;

/// <summary>A file and the tensors taken from it; <see cref="Tensors"/> null means all of them.</summary>
public sealed record FileSelection(string Path, IReadOnlyList<string>? Tensors = null)
{
    public bool IsWholeFile => Tensors is null;
}
