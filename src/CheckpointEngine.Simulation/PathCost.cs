namespace CheckpointEngine.Simulation;

/// <summary>
/// A point in simulated time with the breakdown of the critical path that led to it: adding a cost
/// charges a category; the later of two points keeps its own path.
/// </summary>
public readonly record struct PathCost(double Staging, double NvLink, double Network, double Reload, double Latency)
{
    public static PathCost Zero => default;

    public double Time => Staging + NvLink + Network + Reload + Latency;

    /// <summary>Both kinds of link together.</summary>
    public double Links => NvLink + Network;

    public PathCost Add(CostCategory category, double seconds) => category switch
    {
        CostCategory.Staging => this with { Staging = Staging + seconds },
        CostCategory.NvLink => this with { NvLink = NvLink + seconds },
        CostCategory.Network => this with { Network = Network + seconds },
        CostCategory.Reload => this with { Reload = Reload + seconds },
        _ => this with { Latency = Latency + seconds },
    };

    public PathCost Add(Cost cost) => Add(CostCategory.Latency, cost.Latency).Add(cost.Category, cost.Work);

    public static PathCost Max(PathCost a, PathCost b) => b.Time > a.Time ? b : a;

    public double this[CostCategory category] => category switch
    {
        CostCategory.Staging => Staging,
        CostCategory.NvLink => NvLink,
        CostCategory.Network => Network,
        CostCategory.Reload => Reload,
        _ => Latency,
    };
}
