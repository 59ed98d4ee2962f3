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

    /// <summary>What the critical path spends most on, NVLink and network counted together as links (then the larger of the two).</summary>
    public CostCategory Bound
    {
        get
        {
            var c = CriticalPath;
            var link = c.Network > c.NvLink ? CostCategory.Network : CostCategory.NvLink;
            return new[] { (CostCategory.Staging, c.Staging), (link, c.Links), (CostCategory.Reload, c.Reload), (CostCategory.Latency, c.Latency) }.MaxBy(x => x.Item2).Item1;
        }
    }

    public string DescribeBound() => Bound switch
    {
        CostCategory.Staging => Plan.Scenario.Method == SimulatedMethod.P2P ? "P2P reads" : "host-to-device copies",
        CostCategory.NvLink => Plan.Routes?.Any(r => r.Kind != RouteKind.Broadcast) == true ? "NVLink (scatters inside stager nodes)" : "NVLink (broadcasts)",
        CostCategory.Network => Plan.Routes?.Any(r => r.Kind == RouteKind.ScatterAndRelay) == true ? "NICs (class relays between nodes)" : "NICs (broadcasts)",
        CostCategory.Reload => "worker reload",
        _ => "per-call latency and per-bucket agreement",
    };
}
