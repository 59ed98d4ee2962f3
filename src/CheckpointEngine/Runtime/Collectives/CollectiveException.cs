namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// A collective failed on this rank: a peer died, missed the deadline, or disagreed. The message
/// names the operation, the group and the ranks involved (world ranks).
/// </summary>
public sealed class CollectiveException(string operation, string group, IReadOnlyList<int> ranks, string problem, Exception? inner = null)
    : CheckpointEngineException($"{operation} in group '{group}': {problem}", inner)
{
    public string Operation { get; } = operation;

    public string Group { get; } = group;

    /// <summary>World ranks the failure is attributed to (empty when unknown).</summary>
    public IReadOnlyList<int> Ranks { get; } = ranks;
}
