using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Tests.Checkpoints;

public sealed class SampleCheckpointTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static Dictionary<string, byte[]> ReadAll(string directory) =>
        Directory.GetFiles(directory).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes, StringComparer.Ordinal);

    [Fact]
    public void Write_SameSeed_SameBytes()
    {
        var a = _dir.File("a");
        var b = _dir.File("b");
        SampleCheckpoint.Write(a, 1 << 16, shards: 2, layers: 2, seed: 7);
        SampleCheckpoint.Write(b, 1 << 16, shards: 2, layers: 2, seed: 7);
        var filesA = ReadAll(a);
        var filesB = ReadAll(b);
        Assert.Equal(filesA.Keys.Order(StringComparer.Ordinal), filesB.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(3, filesA.Count); // Two shards and the index.
        foreach (var (name, bytes) in filesA)
        {
            Assert.True(bytes.AsSpan().SequenceEqual(filesB[name]), name);
        }
    }

    [Fact]
    public void Write_DifferentSeed_DifferentBytes()
    {
        var a = _dir.File("a");
        var b = _dir.File("b");
        var filesA = SampleCheckpoint.Write(a, 1 << 16, shards: 2, layers: 2, seed: 7);
        var filesB = SampleCheckpoint.Write(b, 1 << 16, shards: 2, layers: 2, seed: 8);
        Assert.Equal(filesA.Select(Path.GetFileName), filesB.Select(Path.GetFileName));
        for (var i = 0; i < filesA.Count; i++)
        {
            Assert.False(File.ReadAllBytes(filesA[i]).AsSpan().SequenceEqual(File.ReadAllBytes(filesB[i])), filesA[i]);
        }
        // Same layout, different contents.
        using var ca = Checkpoint.Open(a);
        using var cb = Checkpoint.Open(b);
        Assert.Equal(ca.AllTensors().Select(e => (e.Tensor.Name, e.Tensor.DType, e.Tensor.ShapeText, e.Tensor.DataOffset, e.Tensor.ByteLength)),
            cb.AllTensors().Select(e => (e.Tensor.Name, e.Tensor.DType, e.Tensor.ShapeText, e.Tensor.DataOffset, e.Tensor.ByteLength)));
    }

    [Fact]
    public void Write_BoolTensors_HoldOnlyZeroAndOne()
    {
        var dir = _dir.File("s");
        SampleCheckpoint.Write(dir, 1 << 16, shards: 2, layers: 2);
        using var ckpt = Checkpoint.Open(dir);
        var bools = ckpt.AllTensors().Where(e => e.Tensor.DType == DType.BOOL).ToList();
        Assert.NotEmpty(bools);
        foreach (var (file, tensor) in bools)
        {
            var bytes = file.View(tensor.Name).Span.ToArray();
            Assert.All(bytes, b => Assert.True(b <= 1, $"{tensor.Name} holds byte {b}"));
            Assert.Contains((byte)0, bytes);
            Assert.Contains((byte)1, bytes);
        }
    }

    [Fact]
    public void Write_HasTheAdvertisedTensorKinds()
    {
        var dir = _dir.File("s");
        var files = SampleCheckpoint.Write(dir, 1 << 16, shards: 2, layers: 2);
        using var ckpt = Checkpoint.Open(dir);
        var tensors = ckpt.AllTensors().Select(e => e.Tensor).ToList();
        var dtypes = tensors.Select(t => t.DType).ToHashSet();
        Assert.Superset(new HashSet<DType> { DType.BF16, DType.F32, DType.F8_E4M3, DType.I64, DType.BOOL }, dtypes);
        Assert.Contains(tensors, t => t.Shape.Length == 0);
        Assert.Contains(tensors, t => t.Shape.Length > 0 && t.ElementCount == 0 && t.ByteLength == 0);
        Assert.Contains(tensors, t => t.DType == DType.F8_E4M3 && t.Name.EndsWith(".weight", StringComparison.Ordinal));
        Assert.Contains(tensors, t => t.DType == DType.F32 && t.Name.EndsWith(".weight_scale", StringComparison.Ordinal) && t.Shape.Length == 0);
        Assert.All(ckpt.Files, f => Assert.Equal("pt", f.Header.Metadata!["format"]));
        Assert.All(ckpt.AllTensors(), e => Assert.Equal(0, (e.File.DataStart + e.Tensor.DataOffset) % e.Tensor.DType.Alignment()));
    }

    [Fact]
    public void Write_ReturnsShardFiles_AndAnIndexThatOpens()
    {
        var dir = _dir.File("s");
        var files = SampleCheckpoint.Write(dir, 1 << 16, shards: 3, layers: 4);
        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"],
            files.Select(Path.GetFileName));
        Assert.All(files, f => Assert.True(File.Exists(f)));
        Assert.True(File.Exists(Path.Combine(dir, Checkpoint.IndexFileName)));
        using var ckpt = Checkpoint.Open(dir);
        Assert.Equal(files, ckpt.Files.Select(f => f.Path));
        Assert.True(ckpt.TryGetTensor("lm_head.weight", out var last, out _));
        Assert.Equal(files[^1], last.Path);
        Assert.True(ckpt.TryGetTensor("model.embed_tokens.weight", out var first, out _));
        Assert.Equal(files[0], first.Path);
        for (var l = 0; l < 4; l++)
        {
            Assert.True(ckpt.TryGetTensor($"model.layers.{l}.self_attn.q_proj.weight", out _, out _));
        }
    }

    [Fact]
    public void Write_SizeRoughlyFollowsTarget()
    {
        var small = _dir.File("small");
        var large = _dir.File("large");
        SampleCheckpoint.Write(small, 1 << 16, shards: 1, layers: 2);
        SampleCheckpoint.Write(large, 4 << 20, shards: 1, layers: 2);
        using var s = Checkpoint.Open(small);
        using var l = Checkpoint.Open(large);
        Assert.True(l.TotalBytes > 4 * s.TotalBytes);
        Assert.InRange(l.TotalBytes, 2L << 20, 8L << 20);
    }

    [Fact]
    public void Write_SingleShard_HoldsEverything()
    {
        var dir = _dir.File("one");
        var files = SampleCheckpoint.Write(dir, 1 << 16, shards: 1, layers: 3);
        var only = Assert.Single(files);
        using var ckpt = Checkpoint.Open(dir);
        Assert.All(ckpt.AllTensors(), e => Assert.Equal(only, e.File.Path));
    }

    [Theory]
    [InlineData(1000L, 1, 1)]
    [InlineData(1L << 16, 0, 1)]
    [InlineData(1L << 16, 1, 0)]
    [InlineData(1L << 16, -1, 1)]
    public void Write_BadArguments_Throw(long bytes, int shards, int layers) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => SampleCheckpoint.Write(_dir.File("x"), bytes, shards, layers));
}

public sealed class SampleCheckpointSeedTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Write_NeighbourSeeds_ShareNoTensorContents()
    {
        SampleCheckpoint.Write(_dir.File("a"), 1 << 16, shards: 1, layers: 2, seed: 1);
        SampleCheckpoint.Write(_dir.File("b"), 1 << 16, shards: 1, layers: 2, seed: 2);
        using var a = Checkpoint.Open(_dir.File("a"));
        using var b = Checkpoint.Open(_dir.File("b"));
        var contentsA = a.AllTensors().Where(e => e.Tensor.ByteLength >= 8).Select(e => Convert.ToHexString(e.File.View(e.Tensor).Span)).ToHashSet();
        Assert.DoesNotContain(b.AllTensors().Where(e => e.Tensor.ByteLength >= 8), e => contentsA.Contains(Convert.ToHexString(e.File.View(e.Tensor).Span)));
    }

    [Fact]
    public void Write_MoreShardsThanLayers_IsRefused()
    {
        var e = Assert.Throws<CheckpointEngineException>(() => SampleCheckpoint.Write(_dir.File("x"), 1 << 16, shards: 5, layers: 4));
        Assert.Contains("5 shards for 4 layers", e.Message);
    }
}

/// <summary>"Deterministic for a seed, across runs and machines": the bytes are pinned, so a change to the layout, names or generator shows.</summary>
public sealed class SampleCheckpointPinnedTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static string Sha256(byte[] bytes) => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes));

    [Fact]
    public void Write_ThreeLayersInTwoShards_IsTheSameEverywhere()
    {
        // Shard 0 holds layers 0 and 1 (ceil(3 / 2) per shard) and the embeddings; shard 1 layer 2, the norm and the head.
        var dir = _dir.File("s");
        SampleCheckpoint.Write(dir, 1 << 16, shards: 2, layers: 3, seed: 1);
        var digests = Directory.GetFiles(dir).Order(StringComparer.Ordinal).Select(f => $"{Path.GetFileName(f)} {Sha256(File.ReadAllBytes(f))}");
        Assert.Equal([
            "model-00001-of-00002.safetensors ca306817602dcfd411967fa3ef7fd1f87cf9acc98d49ed4b07cb5caa854e9950",
            "model-00002-of-00002.safetensors b15e66e452e006d0862c358ce3451d1aeb5924e0a242f758dd2e94299985d8b8",
            "model.safetensors.index.json 49223e43fe07dcf425e9ae55cbee726f714c4bd1603365b6faa8c29046d84950",
        ], digests);
        using var ckpt = Checkpoint.Open(dir);
        Assert.Equal(["model.layers.0.", "model.layers.1."], ckpt.Files[0].Header.Tensors.Select(t => t.Name).Where(n => n.StartsWith("model.layers.", StringComparison.Ordinal)).Select(n => n[..15]).Distinct());
    }

    [Theory]
    [InlineData(13, DType.U8, "09ff33c70a35322b91b0ddb92d6ceb2792921b19f4e756aeaec9d9c1dc78116c")]
    [InlineData((1 << 20) + 5, DType.U8, "0cfadfaa93de8f5f08f90fa46c44a5285dc3506632ea6f160010d72f7e8227a1")]
    [InlineData(21, DType.BOOL, "9b25c81a7ce1ad45e8d8a73cf9af31cccbd76f5de3ebb680f49e1c2c56698fdc")]
    public void Filler_OddLengthsAndChunkEdges_AreTheSameEverywhere(int length, DType dtype, string sha256)
    {
        using var stream = new MemoryStream();
        SampleCheckpoint.Filler(SampleCheckpoint.Mix(3, 4), length, dtype)(stream);
        Assert.Equal(length, stream.Length);
        Assert.Equal(sha256, Sha256(stream.ToArray()));
    }
}
