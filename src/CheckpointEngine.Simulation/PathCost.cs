namespace CheckpointEngine.Simulation;

/// <summary>
/// A point in simulated time with the breakdown of the critical path that led to it: adding a cost
/// charges a category; the later of two points keeps its own path.
/// </summary>
public readonly record struct PathCost(double Staging, double Link, double Reload, double Latency)
{
    public static PathCost Zero => default;

    public double Time => Staging + Link + Reload + Latency;

    public PathCost Add(CostCategory category, double seconds) => category switch
    {
        CostCategory.Staging => this with { Staging = Staging + seconds },
        CostCategory.Link => this with { Link = Link + seconds },
        CostCategory.Reload => this with { Reload = Reload + seconds },
        _ => this with { Latency = Latency + seconds },
    };

    public PathCost Add(Cost cost) => Add(CostCategory.Latency, cost.Latency).Add(cost.Category, cost.Work);

    public static PathCost Max(PathCost a, PathCost b) => b.Time > a.Time ? b : a;

    public double this[CostCategory category] => category switch
    {
        CostCategory.Staging => Staging,
        CostCategory.Link => Link,
        CostCategory.Reload => Reload,
        _ => Latency,
    };
}
