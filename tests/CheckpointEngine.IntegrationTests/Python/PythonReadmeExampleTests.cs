using System.Text.RegularExpressions;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.Memory;

namespace CheckpointEngine.IntegrationTests.Python;

/// <summary>
/// python/README.md's "Any PyTorch engine" example, run as written: its Python block is saved as engine.py and
/// started, its <c>ckpt-engine update</c> line runs with DIR and PORT filled in, and the model must then hold
/// the checkpoint's bytes (twice: the second update is the shard-aware one, with the loader recorded).
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class PythonReadmeExampleTests(PythonTorch torch) : IClassFixture<PythonTorch>, IDisposable
{
    private const string Section = "## Any PyTorch engine";

    private readonly TempDirectory _temp = new();
    private PythonEngine? _engine;

    public void Dispose()
    {
        _engine?.Dispose();
        SharedMemorySegment.SweepAbandoned(TimeSpan.Zero);
        _temp.Dispose();
    }

    /// <summary>The first fenced block of <paramref name="language"/> in the README's section.</summary>
    private static string Block(string section, string language)
    {
        var match = Regex.Match(section, $"```{language}\n(.*?)```", RegexOptions.Singleline);
        Assert.True(match.Success, $"python/README.md's \"{Section}\" has no ```{language} block");
        return match.Groups[1].Value;
    }

    [Fact]
    public async Task ReadmeExample_RunsAsWritten_TheModelHoldsEachCheckpointsBytes()
    {
        var readme = File.ReadAllText(Path.Combine(PythonTorch.PackageRoot, "README.md"));
        var start = readme.IndexOf(Section, StringComparison.Ordinal);
        Assert.True(start >= 0, $"python/README.md has no \"{Section}\" section");
        var end = readme.IndexOf("\n## ", start + Section.Length, StringComparison.Ordinal);
        var section = readme[start..(end < 0 ? readme.Length : end)];
        var engineFile = _temp.WriteText("engine.py", Block(section, "python"));
        var shell = Block(section, "sh").Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('#')[0].Trim()).ToList();
        Assert.Equal("python3 engine.py", shell[0]);
        var update = shell.Single(l => l.StartsWith("ckpt-engine update ", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..];
        Assert.Contains("DIR", update);
        Assert.Contains("http://127.0.0.1:PORT", update);

        var engine = _engine = await PythonEngine.StartFileAsync(engineFile, new Dictionary<string, string> { ["PYTHONPATH"] = PythonTorch.PackageRoot });
        Assert.Matches(@"^http://127\.0\.0\.1:\d+$", engine.Url);
        // This run's device id, so that no other process's worker socket can be in the way.
        var environment = new Dictionary<string, string> { [CheckpointEngine.Runtime.RankConfig.DeviceIdVariable] = $"readme-{Guid.NewGuid():N}" };
        foreach (var seed in (int[])[1, 2])
        {
            TestTensor[] tensors = [TestTensor.Random("weight", DType.F32, [64, 64], seed), TestTensor.Random("bias", DType.F32, [64], seed)];
            var dir = _temp.SubDirectory($"step-{seed}");
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors.Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, t.Bytes)));
            var args = update.Select(a => a == "DIR" ? dir : a == "http://127.0.0.1:PORT" ? engine.Url : a).ToArray();

            var (code, stdout, stderr) = await CkptEngineScript.RunAsync(environment, null, args);

            Assert.True(code == 0, $"`ckpt-engine {string.Join(' ', args)}` exited {code} (torch {torch.TorchVersion}):\n{stderr}{stdout}\n{engine.Log()}");
            var (_, digest) = Assert.Single(await engine.DigestsAsync());
            Assert.Equal(tensors.ToDictionary(t => t.Name, t => t.Sha256).OrderBy(kv => kv.Key, StringComparer.Ordinal),
                digest.OrderBy(kv => kv.Key, StringComparer.Ordinal));
        }
    }
}
