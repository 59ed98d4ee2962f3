namespace CheckpointEngine.Memory;

/// <summary>A registration would take the registered checkpoints past the registry's <see cref="CheckpointRegistry.Budget"/>; nothing was allocated.</summary>
public sealed class RegistrationBudgetException(string checkpoint, long used, long requested, long budget)
    : CheckpointEngineException(
        $"checkpoint '{checkpoint}' needs {Format(requested)} of host memory, but {Format(used)} of the {Format(budget)} registration budget " +
        $"are in use ({budget - used} bytes left): unregister a checkpoint or raise the budget")
{
    public string Checkpoint { get; } = checkpoint;

    /// <summary>Bytes held by registered checkpoints and registrations under way.</summary>
    public long Used { get; } = used;

    /// <summary>Bytes this registration needs (its buffers, copied and mapped in place).</summary>
    public long Requested { get; } = requested;

    public long Budget { get; } = budget;

    private static string Format(long bytes) => bytes < 1L << 20
        ? $"{bytes} bytes"
        : $"{bytes} bytes ({bytes / (double)(1L << 30):0.###} GiB)";
}
