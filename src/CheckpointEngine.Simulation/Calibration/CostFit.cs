namespace CheckpointEngine.Simulation.Calibration;

/// <summary>
/// Fits <see cref="CostParameters"/> to published rows: minimises the sum of squared log errors of the
/// simulated original over the rows given, plus a weak pull (<see cref="PriorWeight"/>) of each parameter
/// towards a typical value, so that a parameter the rows cannot see (a link that never bounds them) stays
/// at that value instead of drifting to a bound. Deterministic: a coarse grid in log space, then coordinate
/// refinement with shrinking steps. Plans are built once; each trial only re-times them.
/// </summary>
public static class CostFit
{
    /// <summary>Bounds of the search, per parameter, in the order of <see cref="CostParameters"/>.</summary>
    private static readonly (double Low, double High)[] Bounds = [(0.1, 1.0), (1e-5, 3e-2), (5e9, 2e12), (0.1, 1.0), (0.01, 10)];

    /// <summary>
    /// Typical values: nccl-tests bus bandwidth reaches ~70% of nominal NVLink/InfiniBand; a small cross-node
    /// collective or a local socket round trip costs tens of µs; GPU-side reload of a bucket ~100 GB/s; RDMA
    /// reads ~80% of line rate; an engine request and post-load hook ~0.5 s.
    /// </summary>
    public static CostParameters Prior { get; } = new(0.7, 50e-6, 100e9, 0.8, 0.5);

    /// <summary>Weight of each parameter's squared log distance from <see cref="Prior"/>, against the squared log error of each row.</summary>
    public const double PriorWeight = 0.002;

    /// <summary>The loss <see cref="Fit"/> minimises, without the prior: the sum of squared log errors.</summary>
    public static double DataLoss(IReadOnlyList<(SimulationPlan Plan, double Seconds)> rows, CostParameters p) =>
        rows.Sum(r => Math.Pow(Math.Log(UpdateSimulator.Run(r.Plan, p).Seconds / r.Seconds), 2));

    public static CostParameters Fit(IReadOnlyList<(SimulationPlan Plan, double Seconds)> rows)
    {
        ArgumentOutOfRangeException.ThrowIfZero(rows.Count);
        var prior = ToVector(Prior);
        double Loss(double[] x) => DataLoss(rows, FromVector(x)) + PriorWeight * x.Select((v, d) => (v - prior[d]) * (v - prior[d])).Sum();

        // Coarse grid: 4 points per parameter, log-spaced.
        const int grid = 4;
        var dims = Bounds.Length;
        var best = new double[dims];
        var bestLoss = double.PositiveInfinity;
        var x = new double[dims];
        for (var i = 0; i < (int)Math.Pow(grid, dims); i++)
        {
            for (int d = 0, rest = i; d < dims; d++, rest /= grid)
            {
                x[d] = Math.Log(Bounds[d].Low) + (Math.Log(Bounds[d].High) - Math.Log(Bounds[d].Low)) * (rest % grid) / (grid - 1);
            }
            var loss = Loss(x);
            if (loss < bestLoss)
            {
                bestLoss = loss;
                x.CopyTo(best, 0);
            }
        }
        // Coordinate refinement in log space: try ± step on each parameter, halve the step when nothing improves.
        for (var step = 0.5; step > 1e-4;)
        {
            var improved = false;
            for (var d = 0; d < dims; d++)
            {
                foreach (var sign in new[] { -1.0, 1.0 })
                {
                    var trial = (double[])best.Clone();
                    trial[d] = Math.Clamp(trial[d] + sign * step, Math.Log(Bounds[d].Low), Math.Log(Bounds[d].High));
                    var loss = Loss(trial);
                    if (loss < bestLoss - 1e-12)
                    {
                        bestLoss = loss;
                        best = trial;
                        improved = true;
                    }
                }
            }
            if (!improved)
            {
                step /= 2;
            }
        }
        return FromVector(best);
    }

    private static double[] ToVector(CostParameters p) =>
        [Math.Log(p.LinkEfficiency), Math.Log(p.CallLatency), Math.Log(p.ReloadBandwidth), Math.Log(p.RdmaEfficiency), Math.Log(p.FinishOverhead)];

    private static CostParameters FromVector(double[] x) => new(Math.Exp(x[0]), Math.Exp(x[1]), Math.Exp(x[2]), Math.Exp(x[3]), Math.Exp(x[4]));
}
