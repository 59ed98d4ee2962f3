using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Tests.Support;
using CheckpointEngine.Quantization;

namespace CheckpointEngine.Tests.Quantization;

/// <summary>
/// <c>quantize SRC DST</c> on a small transformer-shaped checkpoint, and registration with
/// <see cref="RegisterOptions.Quantize"/>: the registered tensors are byte for byte the written file's.
/// </summary>
public sealed class Fp8CheckpointTests : IDisposable
{
    private readonly TempDirectory _dir = TempDirectory.OnDisk();

    public void Dispose() => _dir.Dispose();

    /// <summary>Name, dtype, shape, and whether the default rules quantize it.</summary>
    private static readonly (string Name, DType DType, long[] Shape, bool Quantized)[] Layout =
    [
        ("model.embed_tokens.weight", DType.BF16, [300, 64], false),
        ("model.layers.0.self_attn.q_proj.weight", DType.BF16, [129, 257], true),
        ("model.layers.0.self_attn.q_proj.bias", DType.BF16, [129], false),
        ("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", DType.BF16, [1, 1], true),
        ("model.layers.0.self_attn.kv_a_layernorm.weight", DType.BF16, [64], false),
        ("model.layers.0.input_layernorm.weight", DType.F32, [64], false),
        ("model.layers.0.mlp.gate.weight", DType.BF16, [8, 64], false),
        ("model.layers.0.mlp.gate.e_score_correction_bias", DType.F32, [8], false),
        ("model.layers.0.mlp.experts.0.gate_proj.weight", DType.BF16, [256, 64], true),
        ("model.layers.0.mlp.experts.0.down_proj.weight", DType.F16, [64, 130], true),
        ("model.layers.0.mlp.experts.0.up_proj.weight", DType.F32, [130, 64], true),
        ("model.layers.0.mlp.experts.stacked.weight", DType.BF16, [2, 4, 8], false),
        ("model.layers.0.mlp.shared_expert_gate.weight", DType.BF16, [1, 64], false),
        ("model.layers.1.mlp.down_proj.weight", DType.BF16, [64, 300], true),
        ("model.layers.1.mlp.empty.weight", DType.BF16, [0, 64], false),
        ("model.norm.weight", DType.BF16, [64], false),
        ("model.step", DType.I64, [], false),
        ("lm_head.weight", DType.BF16, [300, 64], false),
    ];

    private static Dictionary<string, byte[]> WriteSource(string dir, string? config = """{"model_type": "deepseek_v3", "hidden_size": 64}""")
    {
        Directory.CreateDirectory(dir);
        var data = Layout.ToDictionary(t => t.Name, t => Fp8BlockQuantizerTests.Weights(t.DType == DType.I64 ? DType.F32 : t.DType, t.DType == DType.I64 ? 2 : Math.Max(1, t.DType.ByteLength(t.Shape) / t.DType.Alignment()), t.Name.Length, specials: false)[..(int)t.DType.ByteLength(t.Shape)]);
        var files = new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" };
        var map = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (var f = 0; f < 2; f++)
        {
            var tensors = Layout.Where((t, i) => i % 2 == f).Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, data[t.Name])).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, files[f]), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            tensors.ForEach(t => map[t.Name] = files[f]);
        }
        SampleCheckpoint.WriteIndex(Path.Combine(dir, Checkpoint.IndexFileName), map, 0);
        if (config is not null)
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), config);
        }
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{\"version\": \"1.0\"}");
        return data;
    }

    [Fact]
    public void Quantize_WritesDeepSeekConvention_AndLeavesTheRestAlone()
    {
        var (src, dst) = (_dir.File("src"), _dir.File("dst"));
        var data = WriteSource(src);
        var (code, output, error) = InProcessCli.Run("quantize", src, dst);
        Assert.True(code == 0, error);
        Assert.Contains("quantized 6 weights", output, StringComparison.Ordinal);
        using var q = Checkpoint.Open(dst);
        Assert.Equal(2, q.Files.Count);
        Assert.Equal(Layout.Length + Layout.Count(t => t.Quantized), q.TensorCount);
        foreach (var (name, dtype, shape, quantized) in Layout)
        {
            Assert.True(q.TryGetTensor(name, out var file, out var t), name);
            var bytes = file.View(t).Span.ToArray();
            if (!quantized)
            {
                Assert.Equal(dtype, t.DType);
                Assert.Equal(data[name], bytes);
                Assert.False(q.TryGetTensor(name + "_scale_inv", out _, out _), name);
                continue;
            }
            var (codes, scales) = Fp8Reference.Quantize(dtype, data[name], shape[0], shape[1], 128, 128);
            Assert.Equal(DType.F8_E4M3, t.DType);
            Assert.Equal(shape, t.Shape);
            Assert.Equal(codes, bytes);
            Assert.True(q.TryGetTensor(name + "_scale_inv", out var scaleFile, out var scale), name);
            Assert.Same(file, scaleFile);
            Assert.Equal(DType.F32, scale.DType);
            Assert.Equal([(shape[0] + 127) / 128, (shape[1] + 127) / 128], scale.Shape);
            Assert.Equal(scales, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(scaleFile.View(scale).Span).ToArray());
        }
        Assert.NotNull(q.IndexPath);
        Assert.Equal("{\"version\": \"1.0\"}", File.ReadAllText(Path.Combine(dst, "tokenizer.json")));
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dst, "config.json")));
        Assert.Equal("deepseek_v3", config.RootElement.GetProperty("model_type").GetString());
        var qc = config.RootElement.GetProperty("quantization_config");
        Assert.Equal("fp8", qc.GetProperty("quant_method").GetString());
        Assert.Equal("e4m3", qc.GetProperty("fmt").GetString());
        Assert.Equal("[128,128]", qc.GetProperty("weight_block_size").GetRawText().Replace(" ", "", StringComparison.Ordinal).Replace("\n", "", StringComparison.Ordinal));
        Assert.False(qc.TryGetProperty("modules_to_not_convert", out _));
    }

    [Fact]
    public void Quantize_FollowsConfigAndSkip()
    {
        var (src, dst) = (_dir.File("src"), _dir.File("dst"));
        var data = WriteSource(src, """{"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 32], "modules_to_not_convert": ["experts.0.down_proj"]}}""");
        var (code, _, error) = InProcessCli.Run("quantize", src, dst, "--skip", @"q_proj\.weight$");
        Assert.True(code == 0, error);
        using var q = Checkpoint.Open(dst);
        Assert.True(q.TryGetTensor("model.layers.0.mlp.experts.0.down_proj.weight", out _, out var kept));
        Assert.Equal(DType.F16, kept.DType);
        Assert.True(q.TryGetTensor("model.layers.0.self_attn.q_proj.weight", out _, out var skipped));
        Assert.Equal(DType.BF16, skipped.DType);
        Assert.True(q.TryGetTensor("model.layers.1.mlp.down_proj.weight_scale_inv", out var f, out var scale));
        Assert.Equal([1L, 10L], scale.Shape); // [ceil(64/64), ceil(300/32)]
        var (_, scales) = Fp8Reference.Quantize(DType.BF16, data["model.layers.1.mlp.down_proj.weight"], 64, 300, 64, 32);
        Assert.Equal(scales, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.View(scale).Span).ToArray());
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dst, "config.json")));
        var notConvert = config.RootElement.GetProperty("quantization_config").GetProperty("modules_to_not_convert").EnumerateArray().Select(e => e.GetString()).ToList();
        Assert.Equal(["experts.0.down_proj", "model.layers.0.self_attn.q_proj"], notConvert);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Register_WithQuantize_IsBitIdenticalToQuantize(bool pooled, bool inPlace)
    {
        using var shm = inPlace ? TempDirectory.InShm() : null;
        var (src, dst) = (Path.Combine(shm?.Path ?? _dir.Path, "src"), _dir.File("dst"));
        WriteSource(src, """{"quantization_config": {"weight_block_size": [64, 128]}}""");
        Assert.Equal(0, InProcessCli.Run("quantize", src, dst).Code);
        using var registry = new CheckpointRegistry();
        var options = new RegisterOptions { Quantize = Fp8Quantization.ForCheckpoint(src), UsePool = pooled, InPlace = inPlace, MaxBufferSize = 8192, CopyThreads = 3 };
        var registered = registry.RegisterCheckpoint("fp8", [src], options: options);
        AssertSame(dst, registered);
        if (inPlace)
        {
            Assert.Empty(registered.InPlaceFiles); // both files hold a quantized weight: copied, not mapped
        }
    }

    [Fact]
    public void Register_SplitByTensor_RanksTogetherHoldTheQuantizedCheckpoint()
    {
        var (src, dst) = (_dir.File("src"), _dir.File("dst"));
        WriteSource(src);
        Assert.Equal(0, InProcessCli.Run("quantize", src, dst).Code);
        using var registry = new CheckpointRegistry();
        using var checkpoint = Checkpoint.Open(src);
        var metas = new List<(ParameterMeta, MemoryBuffer)>();
        for (var rank = 0; rank < 3; rank++)
        {
            var c = registry.RegisterCheckpoint($"r{rank}", CheckpointSplit.ByTensor(checkpoint, rank, 3), options: new RegisterOptions { Quantize = new Fp8Quantization() });
            metas.AddRange(c.Buffers.SelectMany(b => b.Metas.Select(m => (m, b))));
        }
        AssertSame(dst, metas);
    }

    [Fact]
    public void Register_InMemoryTensors_AreQuantizedToo()
    {
        var (src, dst) = (_dir.File("src"), _dir.File("dst"));
        var data = WriteSource(src);
        Assert.Equal(0, InProcessCli.Run("quantize", src, dst).Code);
        using var registry = new CheckpointRegistry();
        var named = Layout.Select(t => new NamedTensor(t.Name, t.DType, t.Shape, data[t.Name]));
        AssertSame(dst, registry.RegisterCheckpoint("mem", named, new RegisterOptions { Quantize = new Fp8Quantization() }));
    }

    private static void AssertSame(string dst, RegisteredCheckpoint registered) =>
        AssertSame(dst, registered.Buffers.SelectMany(b => b.Metas.Select(m => (m, b))).ToList());

    /// <summary>Every tensor of the written checkpoint is registered with the same name, dtype, shape and bytes, and nothing else is.</summary>
    private static void AssertSame(string dst, List<(ParameterMeta Meta, MemoryBuffer Buffer)> registered)
    {
        using var written = Checkpoint.Open(dst);
        Assert.Equal(written.AllTensors().Select(t => t.Tensor.Name).Order(StringComparer.Ordinal), registered.Select(r => r.Meta.Name).Order(StringComparer.Ordinal));
        foreach (var (meta, buffer) in registered)
        {
            Assert.True(written.TryGetTensor(meta.Name, out var file, out var t));
            Assert.Equal(t.DType, meta.DType);
            Assert.Equal(t.Shape, meta.Shape);
            Assert.True(file.View(t).Span.SequenceEqual(buffer.Bytes(meta)), $"{meta.Name}: registered bytes differ from the written file's");
            Assert.Equal(ReferenceCrc32.Of(file.View(t).Span), meta.Crc32); // Quantized weights and scales are hashed after they are written.
        }
    }

    [Fact]
    public void Quantize_BadInput_SaysWhat()
    {
        var src = _dir.File("src");
        WriteSource(src);
        var busy = _dir.SubDirectory("busy");
        File.WriteAllText(Path.Combine(busy, "x"), "");
        Assert.Contains("exists and is not an empty directory", Fails("quantize", src, busy), StringComparison.Ordinal);
        Assert.Contains($"{_dir.File("missing")}: no such file or directory", Fails("quantize", _dir.File("missing"), _dir.File("d1")), StringComparison.Ordinal);
        Assert.Contains("'[' is not a valid regular expression", Fails("quantize", src, _dir.File("d2"), "--skip", "["), StringComparison.Ordinal);
        var (code, _, err) = InProcessCli.Run("quantize", src, _dir.File("d3"), "--block", "0");
        Assert.NotEqual(0, code);
        Assert.Contains("--block must be in [1, 65536], not 0", err, StringComparison.Ordinal);
        Assert.False(Directory.Exists(_dir.File("d1")) || Directory.Exists(_dir.File("d2")) || Directory.Exists(_dir.File("d3")));

        File.WriteAllText(Path.Combine(src, "config.json"), """{"quantization_config": {"quant_method": "awq"}}""");
        Assert.Contains("quant_method is 'awq'", Fails("quantize", src, _dir.File("d4")), StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(src, "config.json"), """{"quantization_config": {"weight_block_size": [64, 64]}}""");
        Assert.Contains("weight_block_size is [64, 64], but block size 128 was asked for", Fails("quantize", src, _dir.File("d5"), "--block", "128"), StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(src, "config.json"), """{"quantization_config": {"weight_block_size": [0, 64]}}""");
        Assert.Contains("weight_block_size must be two positive whole numbers", Fails("quantize", src, _dir.File("d6")), StringComparison.Ordinal);
    }

    [Fact]
    public void Quantize_ScaleNameTaken_NamesTheTensor()
    {
        var src = _dir.SubDirectory("src");
        SafeTensorsWriter.Write(Path.Combine(src, "a.safetensors"), [
            TensorToWrite.FromBytes("x.weight", DType.BF16, [2, 2], new byte[8]),
            TensorToWrite.FromBytes("x.weight_scale_inv", DType.F32, [1, 1], new byte[4]),
        ]);
        var message = Fails("quantize", src, _dir.File("dst"));
        Assert.Contains("tensor 'x.weight': is selected for FP8, but a tensor 'x.weight_scale_inv' already exists", message, StringComparison.Ordinal);
        using var registry = new CheckpointRegistry();
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("x", [src], options: new RegisterOptions { Quantize = new Fp8Quantization() }));
        Assert.Equal("x.weight", e.Tensor);
        Assert.False(registry.TryGet("x", out _));
    }

    [Fact]
    public void Update_Quantize_NeedsACheckpointPathAndFp8()
    {
        var (code, _, err) = InProcessCli.Run("update", "--load-metas-file", _dir.File("m.json"), "--endpoint", "http://127.0.0.1:1", "--update-method", "p2p", "--quantize", "fp8");
        Assert.NotEqual(0, code);
        Assert.Contains("--quantize converts what this rank registers: it needs --checkpoint-path", err, StringComparison.Ordinal);
        (code, _, err) = InProcessCli.Run("update", "--checkpoint-path", _dir.Path, "--endpoint", "http://127.0.0.1:1", "--quantize", "int4");
        Assert.NotEqual(0, code);
        Assert.Contains("int4", err, StringComparison.Ordinal);
    }

    [Fact]
    public void Fp8Quantization_BadSettings_Throw()
    {
        Assert.Throws<CheckpointEngineException>(() => new Fp8Quantization(0, 128));
        Assert.Throws<CheckpointEngineException>(() => new Fp8Quantization(128, -1));
        Assert.Throws<CheckpointEngineException>(() => new Fp8Quantization(skip: "(unclosed"));
    }

    private static string Fails(params string[] args)
    {
        var (code, _, err) = InProcessCli.Run(args);
        Assert.Equal(CheckpointEngine.Cli.Commands.CkptEngineCli.BadInput, code);
        return err;
    }
}
