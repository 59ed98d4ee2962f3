using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Calibration;

namespace CheckpointEngine.IntegrationTests.Simulation;

/// <summary>Whole-model simulations, here rather than in the unit tests: under mutation testing's instrumentation they outlive its per-test coverage limit. The calibration: fitted on the original's 8/16-GPU rows, the 256-GPU rows predicted. One run shared by the tests.</summary>
public sealed class ReproductionTests(ReproductionTests.Fixture fixture) : IClassFixture<ReproductionTests.Fixture>
{
    public sealed class Fixture
    {
        public Reproduction Result { get; } = Reproduction.Run();
    }

    [Fact]
    public void HeldOutRows_PredictedWithinTwentyPercent()
    {
        var heldOut = fixture.Result.Rows.Where(r => r.Row.HeldOut).ToList();
        Assert.Equal(4, heldOut.Count);
        Assert.All(heldOut, r => Assert.True(Math.Abs(r.Error) <= 0.20, $"{r.Row.Label}: {r.Predicted:F2} s against {r.Row.Seconds:F2} s ({r.Error:P1})"));
    }

    [Fact]
    public void FittedRows_WithinTwentyPercent() =>
        Assert.All(fixture.Result.Rows.Where(r => !r.Row.HeldOut), r => Assert.True(Math.Abs(r.Error) <= 0.20, $"{r.Row.Label}: {r.Error:P1}"));

    [Fact]
    public void StoredCalibration_IsWhatTheFitGives()
    {
        var fitted = fixture.Result.Fitted;
        var stored = CostParameters.Calibrated;
        foreach (var (name, f, s) in new[]
        {
            ("link efficiency", fitted.LinkEfficiency, stored.LinkEfficiency), ("call latency", fitted.CallLatency, stored.CallLatency),
            ("reload", fitted.ReloadBandwidth, stored.ReloadBandwidth), ("RDMA efficiency", fitted.RdmaEfficiency, stored.RdmaEfficiency),
            ("finish overhead", fitted.FinishOverhead, stored.FinishOverhead),
        })
        {
            Assert.True(Math.Abs(f / s - 1) < 0.02, $"{name}: fitted {f}, stored {s}; update CostParameters.Calibrated");
        }
    }

    [Fact]
    public void Fit_NeverSeesTheHeldOutRows()
    {
        // Changing a held-out row's published time changes nothing fitted (small rows, to keep it quick).
        var fitted = PublishedRow.All.Where(r => r.Gpus == 8).ToList();
        var heldOut = fitted[0] with { HeldOut = true };
        var a = Reproduction.Run([.. fitted, heldOut]);
        var b = Reproduction.Run([.. fitted, heldOut with { Seconds = heldOut.Seconds * 3 }]);
        Assert.Equal(a.Fitted, b.Fitted);
        Assert.NotEqual(a.Rows[^1].Error, b.Rows[^1].Error);
    }

    [Fact]
    public void Markdown_ListsEveryRowWithItsError()
    {
        var text = fixture.Result.ToMarkdown();
        Assert.Equal(PublishedRow.All.Count, text.Split('\n').Count(l => l.StartsWith("| ", StringComparison.Ordinal) && l.Contains(" s |", StringComparison.Ordinal)));
        Assert.Contains("(held out)", text, StringComparison.Ordinal);
    }
}
