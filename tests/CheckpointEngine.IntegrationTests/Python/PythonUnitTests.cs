namespace CheckpointEngine.IntegrationTests.Python;

/// <summary>The Python package's own unittest suite (framing, dtypes, segments, receiver, vLLM extension), run as users would.</summary>
public sealed class PythonUnitTests(PythonTorch torch) : IClassFixture<PythonTorch>
{
    [Fact]
    public async Task UnittestSuite_Passes()
    {
        var (code, output) = await TestProcess.RunAsync(PythonTorch.Python, ["-m", "unittest", "discover", "-s", "tests", "-v"], TimeSpan.FromMinutes(5),
            PythonTorch.PackageRoot, new Dictionary<string, string> { ["PYTHONDONTWRITEBYTECODE"] = "1" });
        Assert.True(code == 0, $"python unittest (torch {torch.TorchVersion}) exited {code}:\n{output}");
        Assert.Matches(@"Ran \d+ tests", output);
        Assert.Contains("\nOK", output, StringComparison.Ordinal);
    }
}
