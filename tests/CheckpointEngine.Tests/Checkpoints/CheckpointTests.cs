using System.Text.Json;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Tests.Checkpoints;

public sealed class CheckpointTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static TensorToWrite U8(string name, int count = 4) =>
        TensorToWrite.FromBytes(name, DType.U8, [count], Enumerable.Range(0, count).Select(i => (byte)(i + name.Length)).ToArray());

    private string WriteFile(string relative, params TensorToWrite[] tensors)
    {
        var path = _dir.File(relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        SafeTensorsWriter.Write(path, tensors);
        return path;
    }

    private string WriteIndex(string relative, IDictionary<string, string> weightMap)
    {
        var json = JsonSerializer.Serialize(new Dictionary<string, object> { ["metadata"] = new { total_size = 0 }, ["weight_map"] = weightMap });
        return _dir.WriteText(relative, json);
    }

    private static CheckpointFormatException OpenBad(string path, string source, string phrase, string? tensor = null)
    {
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(path).Dispose());
        Assert.Equal(source, ex.Source);
        Assert.Contains(source, ex.Message, StringComparison.Ordinal);
        Assert.Contains(phrase, ex.Message, StringComparison.Ordinal);
        Assert.Equal(tensor, ex.Tensor);
        return ex;
    }

    [Fact]
    public void Open_IndexedDirectory_ResolvesExactlyTheIndexedFiles_IgnoringStrays()
    {
        var dir = _dir.SubDirectory("ckpt");
        var files = SampleCheckpoint.Write(dir, 1 << 16, shards: 3, layers: 3);
        var stray = WriteFile("ckpt/zz-stray.safetensors", U8("stray.weight"));
        WriteFile("ckpt/aa-stray.safetensors", U8("model.embed_tokens.weight")); // Would clash if it were opened.

        Assert.Equal(files.Order(StringComparer.Ordinal), Checkpoint.ResolveFiles(dir));
        using var ckpt = Checkpoint.Open(dir);
        Assert.Equal(Path.Combine(dir, Checkpoint.IndexFileName), ckpt.IndexPath);
        Assert.Equal(files.Order(StringComparer.Ordinal), ckpt.Files.Select(f => f.Path));
        Assert.DoesNotContain(stray, ckpt.Files.Select(f => f.Path));
        Assert.False(ckpt.TryGetTensor("stray.weight", out _, out _));

        using var indexJson = JsonDocument.Parse(File.ReadAllBytes(ckpt.IndexPath!));
        var weightMap = indexJson.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        Assert.Equal(weightMap.Count, ckpt.TensorCount);
        foreach (var (name, file) in weightMap)
        {
            Assert.True(ckpt.TryGetTensor(name, out var holder, out var tensor));
            Assert.Equal(file, Path.GetFileName(holder.Path));
            Assert.Equal(name, tensor.Name);
        }
        Assert.Equal(ckpt.Files.Sum(f => f.DataLength), ckpt.TotalBytes);
        Assert.Equal(weightMap.Keys.Order(StringComparer.Ordinal), ckpt.AllTensors().Select(e => e.Tensor.Name));
    }

    [Fact]
    public void Open_DirectoryWithOtherlyNamedIndex_UsesIt()
    {
        var a = WriteFile("d/a.safetensors", U8("x"));
        WriteFile("d/b.safetensors", U8("y"));
        var index = WriteIndex("d/custom.safetensors.index.json", new Dictionary<string, string> { ["x"] = "a.safetensors" });
        using var ckpt = Checkpoint.Open(_dir.File("d"));
        Assert.Equal(index, ckpt.IndexPath);
        Assert.Equal([a], ckpt.Files.Select(f => f.Path));
    }

    [Fact]
    public void Open_DirectoryWithSeveralIndexesNoneStandard_Throws()
    {
        WriteFile("d/a.safetensors", U8("x"));
        WriteIndex("d/one.safetensors.index.json", new Dictionary<string, string> { ["x"] = "a.safetensors" });
        WriteIndex("d/two.safetensors.index.json", new Dictionary<string, string> { ["x"] = "a.safetensors" });
        OpenBad(_dir.File("d"), _dir.File("d"), "several index files");
    }

    [Fact]
    public void Open_DirectoryWithSeveralIndexesOneStandard_PrefersIt()
    {
        WriteFile("d/a.safetensors", U8("x"));
        var b = WriteFile("d/b.safetensors", U8("y"));
        WriteIndex("d/one.safetensors.index.json", new Dictionary<string, string> { ["x"] = "a.safetensors" });
        WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["y"] = "b.safetensors" });
        using var ckpt = Checkpoint.Open(_dir.File("d"));
        Assert.Equal([b], ckpt.Files.Select(f => f.Path));
    }

    [Fact]
    public void Open_PlainDirectory_OpensEverySafetensorsFileInOrdinalOrder()
    {
        var b = WriteFile("d/b.safetensors", U8("b.w"), U8("b.v", 2));
        var a = WriteFile("d/a.safetensors", U8("a.w"));
        var upper = WriteFile("d/C.safetensors", U8("c.w"));
        _dir.WriteText("d/readme.txt", "not a checkpoint");
        _dir.WriteText("d/config.json", "{}");
        WriteFile("d/sub/nested.safetensors", U8("nested")); // Subdirectories are not searched.

        using var ckpt = Checkpoint.Open(_dir.File("d"));
        Assert.Null(ckpt.IndexPath);
        Assert.Equal([upper, a, b], ckpt.Files.Select(f => f.Path));
        Assert.Equal(4, ckpt.TensorCount);
        Assert.True(ckpt.TryGetTensor("b.v", out var file, out var tensor));
        Assert.Equal(b, file.Path);
        Assert.Equal(2, tensor.ByteLength);
        Assert.False(ckpt.TryGetTensor("nested", out _, out _));
        Assert.Equal(["a.w", "b.v", "b.w", "c.w"], ckpt.AllTensors().Select(e => e.Tensor.Name));
    }

    [Fact]
    public void Open_ExplicitFiles_DeduplicatesRepeats()
    {
        var a = WriteFile("a.safetensors", U8("x"));
        var b = WriteFile("b.safetensors", U8("y"));
        using var ckpt = Checkpoint.Open(b, a, b);
        Assert.Equal([b, a], ckpt.Files.Select(f => f.Path));
        Assert.Equal(2, ckpt.TensorCount);
    }

    [Fact]
    public void Open_DuplicateTensorAcrossFiles_NamesBothFiles()
    {
        var a = WriteFile("d/a.safetensors", U8("shared"), U8("only_a"));
        var b = WriteFile("d/b.safetensors", U8("shared"));
        var ex = OpenBad(_dir.File("d"), b, "tensor is also in", "shared");
        Assert.Contains(a, ex.Message, StringComparison.Ordinal);
        Assert.Contains(b, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_IndexNamesMissingFile_Throws()
    {
        WriteFile("d/a.safetensors", U8("x"));
        var index = WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "a.safetensors", ["y"] = "missing.safetensors" });
        OpenBad(_dir.File("d"), index, "weight_map names missing.safetensors, which does not exist");
    }

    [Fact]
    public void Open_IndexTensorNoFileHolds_Throws()
    {
        WriteFile("d/a.safetensors", U8("x"));
        var index = WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "a.safetensors", ["ghost"] = "a.safetensors" });
        OpenBad(_dir.File("d"), index, "listed in weight_map under a.safetensors but no file holds it", "ghost");
    }

    [Fact]
    public void Open_FileTensorNotInIndex_Throws()
    {
        WriteFile("d/a.safetensors", U8("x"), U8("unlisted"));
        var index = WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "a.safetensors" });
        OpenBad(_dir.File("d"), index, "in a.safetensors but not listed in weight_map", "unlisted");
    }

    [Fact]
    public void Open_IndexPointsAtWrongFile_Throws()
    {
        WriteFile("d/a.safetensors", U8("x"));
        WriteFile("d/b.safetensors", U8("y"));
        var index = WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "b.safetensors", ["y"] = "b.safetensors" });
        // The index names only b, so x is in no opened file.
        OpenBad(_dir.File("d"), index, "no file holds it", "x");
    }

    [Fact]
    public void Open_IndexSwapsFiles_Throws()
    {
        WriteFile("d/a.safetensors", U8("x"));
        WriteFile("d/b.safetensors", U8("y"));
        var index = WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "b.safetensors", ["y"] = "a.safetensors" });
        OpenBad(_dir.File("d"), index, "weight_map says b.safetensors but the tensor is in a.safetensors", "x");
    }

    [Fact]
    public void Open_IndexInSubfolderPaths_Resolves()
    {
        var a = WriteFile("d/shards/a.safetensors", U8("x"));
        WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "shards/a.safetensors" });
        using var ckpt = Checkpoint.Open(_dir.File("d"));
        Assert.Equal([a], ckpt.Files.Select(f => f.Path));
    }

    [Theory]
    [InlineData("../x.safetensors")]
    [InlineData("..")]
    [InlineData("sub/../../x.safetensors")]
    [InlineData("..\\x.safetensors")]
    [InlineData("/etc/passwd")]
    [InlineData("")]
    public void Open_IndexPathOutsideDirectory_Throws(string file)
    {
        WriteFile("x.safetensors", U8("x"));
        WriteFile("d/a.safetensors", U8("x"));
        var index = WriteIndex("d/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = file });
        OpenBad(_dir.File("d"), index, $"weight_map names '{file}', which is not a file inside the checkpoint directory", "x");
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("{\"weight_map\":")]
    [InlineData("")]
    public void Open_IndexNotJson_Throws(string text)
    {
        WriteFile("d/a.safetensors", U8("x"));
        var index = _dir.WriteText("d/" + Checkpoint.IndexFileName, text);
        OpenBad(_dir.File("d"), index, "index is not valid JSON");
    }

    [Theory]
    [InlineData("[]", "index is not a JSON object", null)]
    [InlineData("{}", "index has no 'weight_map' object", null)]
    [InlineData("{\"weight_map\":[]}", "index has no 'weight_map' object", null)]
    [InlineData("{\"weight_map\":{}}", "weight_map is empty", null)]
    [InlineData("{\"weight_map\":{\"x\":1}}", "weight_map value is not a file name", "x")]
    [InlineData("{\"weight_map\":{\"x\":\"a.safetensors\",\"x\":\"a.safetensors\"}}", "listed twice in weight_map", "x")]
    public void Open_IndexMalformed_Throws(string text, string phrase, string? tensor)
    {
        WriteFile("d/a.safetensors", U8("x"));
        var index = _dir.WriteText("d/" + Checkpoint.IndexFileName, text);
        OpenBad(_dir.File("d"), index, phrase, tensor);
    }

    [Fact]
    public void Open_IndexWithLoneSurrogate_ThrowsFormatException()
    {
        WriteFile("d/a.safetensors", U8("x"));
        var index = _dir.WriteText("d/" + Checkpoint.IndexFileName, "{\"weight_map\":{\"\\uD800\":\"a.safetensors\"}}");
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(_dir.File("d")).Dispose());
        Assert.Equal(index, ex.Source);
    }

    [Fact]
    public void Open_NoSuchPath_Throws()
    {
        var path = _dir.File("nowhere");
        OpenBad(path, path, "no such file or directory");
    }

    [Fact]
    public void Open_EmptyDirectory_Throws()
    {
        var path = _dir.SubDirectory("empty");
        OpenBad(path, path, "directory holds no *.safetensors files and no index");
    }

    [Fact]
    public void Open_NoPaths_ThrowsArgumentException() => Assert.Throws<ArgumentException>(() => Checkpoint.Open([]));

    [Fact]
    public void Open_TwoIndexedDirectories_Throws()
    {
        WriteFile("d1/a.safetensors", U8("x"));
        var first = WriteIndex("d1/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["x"] = "a.safetensors" });
        WriteFile("d2/a.safetensors", U8("y"));
        var second = WriteIndex("d2/" + Checkpoint.IndexFileName, new Dictionary<string, string> { ["y"] = "a.safetensors" });
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(_dir.File("d1"), _dir.File("d2")).Dispose());
        Assert.Equal(second, ex.Source);
        Assert.Contains("a second index", ex.Message, StringComparison.Ordinal);
        Assert.Contains(first, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_MalformedFileInDirectory_ReportsThatFile()
    {
        WriteFile("d/a.safetensors", U8("x"));
        var bad = _dir.Write("d/b.safetensors", [1, 2, 3]);
        OpenBad(_dir.File("d"), bad, "shorter than the 8-byte header length");
    }

    [Fact]
    public void Dispose_ClosesEveryFile()
    {
        WriteFile("d/a.safetensors", U8("x"));
        WriteFile("d/b.safetensors", U8("y"));
        var ckpt = Checkpoint.Open(_dir.File("d"));
        var files = ckpt.Files.ToList();
        ckpt.Dispose();
        Assert.All(files, f => Assert.Throws<ObjectDisposedException>(() => f.View(f.Tensors[0])));
    }
}

public sealed class CheckpointPathTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Open_SameFileReachedTwoWays_IsReadOnce()
    {
        var dir = _dir.SubDirectory("plain");
        SafeTensorsWriter.Write(Path.Combine(dir, "a.safetensors"), [TensorToWrite.FromBytes("w", DType.U8, [4], new byte[4])]);
        using var checkpoint = Checkpoint.Open(dir, dir + "//a.safetensors", Path.Combine(dir, "a.safetensors"));
        Assert.Single(checkpoint.Files);
        Assert.Equal(1, checkpoint.TensorCount);
    }

    [Fact]
    public void Open_IndexedDirectoryPlusAnotherFile_Works()
    {
        var dir = _dir.File("indexed");
        SampleCheckpoint.Write(dir, 1 << 16, shards: 2, layers: 2);
        var extra = _dir.File("extra.safetensors");
        SafeTensorsWriter.Write(extra, [TensorToWrite.FromBytes("extra.bias", DType.F32, [2], new byte[8])]);
        using var checkpoint = Checkpoint.Open(dir, extra);
        Assert.Equal(3, checkpoint.Files.Count);
        Assert.True(checkpoint.TryGetTensor("extra.bias", out _, out _));
    }
}
