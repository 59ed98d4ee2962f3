using System.Globalization;
using System.Text;

namespace CheckpointEngine.Simulation.Calibration;

/// <summary>
/// The original's published table, reproduced: the cost model is fitted on the rows that are not held out
/// (8 and 16 GPUs), then every row is simulated with those parameters, the 256-GPU rows included, together
/// with our schedule and shard-aware updates (by broadcast, as the first update with declarations, and as built) on the same clusters.
/// </summary>
public sealed record Reproduction(CostParameters Fitted, IReadOnlyList<ReproducedRow> Rows)
{
    public static Reproduction Run(IReadOnlyList<PublishedRow>? rows = null)
    {
        rows ??= PublishedRow.All;
        SimulatedDesign[] designs = [SimulatedDesign.Original, SimulatedDesign.Ours, SimulatedDesign.ShardAwareBroadcast, SimulatedDesign.ShardAware];
        // Plans do not depend on costs: build them once (in parallel: a 256-rank plan of a 1T model takes a moment).
        var plans = rows.SelectMany(r => designs.Select(d => (Row: r, Design: d)))
            .AsParallel().AsOrdered()
            .Select(x => (x.Row, x.Design, Plan: SimulationPlan.Build(x.Row.Scenario(x.Design))))
            .ToList();
        SimulationPlan PlanOf(PublishedRow row, SimulatedDesign design) => plans.First(p => p.Row == row && p.Design == design).Plan;

        var fitted = CostFit.Fit([.. rows.Where(r => !r.HeldOut).Select(r => (PlanOf(r, SimulatedDesign.Original), r.Seconds))]);
        return new Reproduction(fitted, [.. rows.Select(r => new ReproducedRow(r,
            UpdateSimulator.Run(PlanOf(r, SimulatedDesign.Original), fitted),
            UpdateSimulator.Run(PlanOf(r, SimulatedDesign.Ours), fitted),
            UpdateSimulator.Run(PlanOf(r, SimulatedDesign.ShardAwareBroadcast), fitted),
            UpdateSimulator.Run(PlanOf(r, SimulatedDesign.ShardAware), fitted)))]);
    }

    /// <summary>A markdown table: published, simulated original, error, ours, shard-aware by broadcast and as built, and what bounds ours and the latter.</summary>
    public string ToMarkdown()
    {
        var s = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        s.AppendLine(inv, $"Fitted on the 8- and 16-GPU rows: {Fitted}.");
        s.AppendLine();
        s.AppendLine("| Model | GPUs | Method | Bucket | Published | Simulated original | Error | Ours | Ours bound by | Shard-aware by broadcast | Shard-aware | Shard-aware bound by |");
        s.AppendLine("| :-- | :-- | :-- | --: | --: | --: | --: | --: | :-- | --: | --: | :-- |");
        foreach (var r in Rows)
        {
            var p = r.Row;
            s.AppendLine(inv, $"| {p.Model.Description} | {p.Gpus}×{p.Cluster.Name.ToUpperInvariant()} TP{p.TensorParallel} | {(p.Method == SimulatedMethod.P2P ? "P2P" : "broadcast")} | {p.BucketGiB:F2} GiB | {p.Seconds:F2} s | {r.Predicted:F2} s | {r.Error * 100:+0.0;-0.0}%{(p.HeldOut ? " (held out)" : "")} | {r.Ours.Seconds:F2} s | {r.Ours.DescribeBound()} | {r.ShardAwareBroadcast.Seconds:F2} s | {r.ShardAware.Seconds:F2} s | {r.ShardAware.DescribeBound()} |");
        }
        return s.ToString();
    }
}
