namespace CheckpointEngine.Simulation;

/// <summary>The time of one operation: a fixed latency plus work charged to <see cref="Category"/>.</summary>
public readonly record struct Cost(CostCategory Category, double Work, double Latency = 0)
{
    public double Seconds => Work + Latency;
}
