namespace CheckpointEngine.Simulation;

/// <summary>
/// The free parameters of the cost model: what a data sheet does not say. Fitted on the original's
/// published 8- and 16-GPU rows (<see cref="Calibration.CostFit"/>); the 256-GPU rows are predicted with them.
/// </summary>
/// <param name="LinkEfficiency">Fraction of nominal NVLink/NIC bandwidth a bulk broadcast reaches.</param>
/// <param name="CallLatency">Seconds of fixed cost per call: a broadcast's launch, a worker's reply, one step of a small all-reduce.</param>
/// <param name="ReloadBandwidth">Bytes per second an inference worker takes bucket bytes into its model (it scans every tensor, copies its slice).</param>
/// <param name="RdmaEfficiency">Fraction of a NIC's bandwidth a one-sided read from another host's pinned memory reaches.</param>
/// <param name="FinishOverhead">Seconds of fixed cost per update: the engine's request round trip and its post-load hook (re-quantization, fusing).</param>
public sealed record CostParameters(double LinkEfficiency, double CallLatency, double ReloadBandwidth, double RdmaEfficiency, double FinishOverhead)
{
    /// <summary>The result of <see cref="Calibration.CostFit.Fit"/> on the published rows, stored so that <c>simulate</c> needs no fit (a test keeps them in step).</summary>
    public static CostParameters Calibrated { get; } = new(LinkEfficiency: 1.0, CallLatency: 40.6e-6, ReloadBandwidth: 75.95e9, RdmaEfficiency: 0.532, FinishOverhead: 0.176);

    public override string ToString() =>
        FormattableString.Invariant($"link efficiency {LinkEfficiency:F2}, call latency {CallLatency * 1e3:F2} ms, reload {ReloadBandwidth / 1e9:F1} GB/s, RDMA efficiency {RdmaEfficiency:F2}, finish overhead {FinishOverhead:F2} s");
}
