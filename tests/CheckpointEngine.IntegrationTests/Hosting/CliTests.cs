using System.Diagnostics;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.IntegrationTests.Hosting;

public sealed class CliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private string Sample()
    {
        var dir = Path.Combine(_dir, "ckpt");
        var (code, _, err) = Run("sample", dir, "--size-mb", "1", "--shards", "2");
        Assert.True(code == 0, err);
        return dir;
    }

    [Fact]
    public void Inspect_Json_ListsEveryTensorWithFileOffsetAndSize()
    {
        var dir = Sample();
        var (code, stdout, stderr) = Run("inspect", dir, "--json");
        Assert.Equal(0, code);
        Assert.Empty(stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        var files = root.GetProperty("files").EnumerateArray().Select(f => f.GetString()!).ToList();
        Assert.Equal(2, files.Count);
        using var checkpoint = Checkpoint.Open(dir);
        var tensors = root.GetProperty("tensors").EnumerateArray().ToList();
        Assert.Equal(checkpoint.TensorCount, tensors.Count);
        foreach (var t in tensors)
        {
            Assert.True(checkpoint.TryGetTensor(t.GetProperty("name").GetString()!, out var file, out var info));
            Assert.Equal(info.DType.Name(), t.GetProperty("dtype").GetString());
            Assert.Equal(info.Shape, t.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()));
            Assert.Equal(file.Path, t.GetProperty("file").GetString());
            Assert.Equal(info.DataOffset, t.GetProperty("offset").GetInt64());
            Assert.Equal(info.ByteLength, t.GetProperty("nbytes").GetInt64());
        }
        Assert.Equal(tensors.Sum(t => t.GetProperty("nbytes").GetInt64()), root.GetProperty("total_bytes").GetInt64());
    }

    [Fact]
    public void Inspect_Table_ListsTensorsAndTotal()
    {
        var dir = Sample();
        var (code, stdout, _) = Run("inspect", dir);
        Assert.Equal(0, code);
        Assert.Contains("model.layers.1.mlp.up_proj.weight", stdout);
        Assert.Contains("F8_E4M3", stdout);
        Assert.Contains("total: 2 files", stdout);
    }

    [Fact]
    public void Inspect_SingleFile_Works()
    {
        var dir = Sample();
        var file = Directory.GetFiles(dir, "*.safetensors")[0];
        var (code, stdout, _) = Run("inspect", file, "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(file, doc.RootElement.GetProperty("files")[0].GetString());
    }

    [Fact]
    public void Inspect_MalformedFile_OneLineErrorNamingFile()
    {
        var bad = Path.Combine(_dir, "bad.safetensors");
        File.WriteAllBytes(bad, [1, 2, 3]);
        var (code, stdout, stderr) = Run("inspect", bad);
        Assert.NotEqual(0, code);
        Assert.Empty(stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: ", line);
        Assert.Contains(bad, line);
        Assert.Contains("shorter than the 8-byte header length", line);
    }

    [Fact]
    public void Inspect_MissingPath_NamesIt()
    {
        var missing = Path.Combine(_dir, "nope");
        var (code, _, stderr) = Run("inspect", missing);
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Contains(missing, stderr);
        Assert.Contains("no such file", stderr);
    }

    [Fact]
    public void Inspect_NoPaths_IsUsageError()
    {
        var (code, _, stderr) = Run("inspect");
        Assert.NotEqual(0, code);
        Assert.NotEmpty(stderr);
    }

    [Fact]
    public void Sample_ZeroShards_IsRejected()
    {
        var (code, _, stderr) = Run("sample", Path.Combine(_dir, "x"), "--shards", "0");
        Assert.NotEqual(0, code);
        Assert.Contains("--shards", stderr);
    }

    /// <summary>The script at the repository root is how users run the CLI: it builds when needed and forwards exit codes.</summary>
    [Fact]
    public async Task Script_InspectJsonAndBadInput()
    {
        var dir = Sample();
        var ok = await CkptEngineScript.RunRepositoryScriptAsync("inspect", dir, "--json");
        Assert.True(ok.Code == 0, ok.Err);
        using (var doc = JsonDocument.Parse(ok.Out))
        {
            Assert.True(doc.RootElement.GetProperty("total_bytes").GetInt64() > 0);
        }
        var bad = Path.Combine(_dir, "empty.safetensors");
        File.WriteAllBytes(bad, []);
        var failed = await CkptEngineScript.RunRepositoryScriptAsync("inspect", bad);
        Assert.Equal(CkptEngineCli.BadInput, failed.Code);
        Assert.Contains("file is empty", failed.Err);
    }
}
