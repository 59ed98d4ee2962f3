namespace CheckpointEngine.Checkpoints;

/// <summary>A client named a file outside the <see cref="AllowedDirectories"/>; nothing about the file is said.</summary>
public sealed class PathNotAllowedException(string path, AllowedDirectories allowed)
    : CheckpointEngineException($"'{path}' is outside the allowed directories ({allowed})")
{
    public string Path { get; } = path;
}
