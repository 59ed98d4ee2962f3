using System.Globalization;

namespace CheckpointEngine.Hosting.Tracing;

/// <summary>How well an update's stages overlapped: pipeline wall time ÷ the busiest stage's total (1.0 = perfect overlap; see <see cref="UpdateTrace.Efficiency"/>); times in microseconds.</summary>
internal sealed record PipelineEfficiency(double Value, int BusiestRank, TraceTrack BusiestStage, double BusiestUs, double PipelineUs)
{
    public string Describe(string method) => string.Create(CultureInfo.InvariantCulture,
        $"pipeline efficiency {Value:F2} (busiest stage: {BusiestStage.Name(method)} on rank {BusiestRank}, {BusiestUs / 1000:F1} ms of a {PipelineUs / 1000:F1} ms pipeline; 1.00 = fully overlapped, 3.00 = three stages in series)");
}
