namespace CheckpointEngine.Simulation.Calibration;

/// <summary>One published row with the simulated original (fitted or predicted) and our designs on the same cluster: ours, shard-aware by broadcast (the first update with declarations), and shard-aware as built.</summary>
public sealed record ReproducedRow(PublishedRow Row, SimulationResult Original, SimulationResult Ours, SimulationResult ShardAwareBroadcast, SimulationResult ShardAware)
{
    public double Predicted => Original.Seconds;

    /// <summary>Relative error of the simulated original against the published time: +0.10 is 10% slow.</summary>
    public double Error => Original.Seconds / Row.Seconds - 1;
}
