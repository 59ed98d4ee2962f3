namespace CheckpointEngine.Simulation;

/// <summary>
/// What a simulated update took: its wall time, the critical path's breakdown (what bounds it), and the
/// busy time of each stage summed over buckets (where the work is).
/// </summary>
/// <param name="StagingBusy">Staging time of the busiest stager (copies or reads, one GPU).</param>
/// <param name="BroadcastBusy">Time the calls that move buckets take, summed over buckets: broadcasts, or scatters and relays.</param>
public sealed record SimulationResult(SimulationPlan Plan, CostModel Costs, PathCost CriticalPath, double StagingBusy, double BroadcastBusy, double ReloadBusy,
    IReadOnlyList<SimulatedBucket> Buckets)
{
    public double Seconds => CriticalPath.Time;

    /// <summary>The category the critical path spends most on.</summary>
    public CostCategory Bound => Enum.GetValues<CostCategory>().MaxBy(c => CriticalPath[c]);

    public string DescribeBound() => Bound switch
    {
        CostCategory.Staging => Plan.Scenario.Method == SimulatedMethod.P2P ? "P2P reads" : "host-to-device copies",
        CostCategory.NvLink => Plan.Routes?.Any(r => r.Kind != RouteKind.Broadcast) == true ? "NVLink (scatters inside stager nodes)" : "NVLink (broadcasts)",
        CostCategory.Network => Plan.Routes?.Any(r => r.Kind == RouteKind.ScatterAndRelay) == true ? "NICs (class relays between nodes)" : "NICs (broadcasts)",
        CostCategory.Reload => "worker reload",
        _ => "per-call latency and per-bucket agreement",
    };
}
