namespace CheckpointEngine.Checkpoints;

/// <summary>
/// A checkpoint file or index is malformed. The message names the file, what is wrong and, where
/// there is one, the tensor and byte offset, so the user can act without a stack trace.
/// </summary>
public sealed class CheckpointFormatException : CheckpointEngineException
{
    public CheckpointFormatException(string source, string problem, string? tensor = null, long? offset = null)
        : base(Format(source, problem, tensor, offset))
    {
        Source = source;
        Problem = problem;
        Tensor = tensor;
        Offset = offset;
    }

    /// <summary>The file (or other input) that is malformed.</summary>
    public new string Source { get; }

    /// <summary>What is wrong, without the file and tensor prefix.</summary>
    public string Problem { get; }

    public string? Tensor { get; }

    /// <summary>Byte offset in the file where the problem is, when known.</summary>
    public long? Offset { get; }

    private static string Format(string source, string problem, string? tensor, long? offset) =>
        $"{source}: {(tensor is null ? "" : $"tensor '{tensor}': ")}{problem}{(offset is { } o ? $" (at byte {o})" : "")}";
}
