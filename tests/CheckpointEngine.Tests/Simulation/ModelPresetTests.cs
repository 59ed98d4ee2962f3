using CheckpointEngine.Checkpoints;
using CheckpointEngine.Simulation.Models;
using CheckpointEngine.Tests.Checkpoints;

namespace CheckpointEngine.Tests.Simulation;

public sealed class ModelPresetTests
{
    public static TheoryData<string> Presets => [.. ModelPresets.All.Select(p => p.Name)];

    [Theory]
    [MemberData(nameof(Presets))]
    public void MainParameters_WithinTwoPercentOfPublishedTotal(string name)
    {
        var preset = ModelPresets.Find(name)!;
        var error = preset.MainParameters / preset.PublishedParameters - 1;
        Assert.True(Math.Abs(error) < 0.02, $"{name}: {preset.MainParameters / 1e9:F1}B against the published {preset.PublishedParameters / 1e9:F0}B ({error:P1})");
    }

    [Fact]
    public void DeepSeek_CheckpointWithMtpModule_IsThePublished685B()
    {
        // The DeepSeek-V3 model card: 685B on Hugging Face, 671B main model plus 14B of the MTP module.
        var total = ModelPresets.DeepSeekV31.Inventory.ParameterCount;
        Assert.InRange(total / 685e9, 0.98, 1.02);
        Assert.InRange((total - ModelPresets.DeepSeekV31.MainParameters) / 14e9, 0.9, 1.1);
    }

    [Fact]
    public void Fp8Presets_EveryQuantizedWeightHasBlockScalesOfItsShape()
    {
        var tensors = ModelPresets.KimiK2.Inventory.Tensors.ToDictionary(t => t.Name);
        var fp8 = tensors.Values.Where(t => t.DType == DType.F8_E4M3).ToList();
        Assert.NotEmpty(fp8);
        foreach (var w in fp8)
        {
            var scale = tensors[w.Name + "_scale_inv"];
            Assert.Equal(DType.F32, scale.DType);
            Assert.Equal([(w.Shape[0] + 127) / 128, (w.Shape[1] + 127) / 128], scale.Shape.ToArray());
        }
        Assert.Equal(DType.BF16, tensors["model.embed_tokens.weight"].DType);
        Assert.Equal(DType.BF16, tensors["model.layers.5.mlp.gate.weight"].DType);
    }

    [Fact]
    public void Inventory_UsesThePublishedNamesAndCounts()
    {
        var glm = ModelPresets.Glm45Air.Inventory.Tensors.Select(t => t.Name).ToHashSet();
        Assert.Contains("model.layers.1.mlp.experts.127.down_proj.weight", glm);
        Assert.Contains("model.layers.0.mlp.gate_proj.weight", glm); // The first layer is dense.
        Assert.Contains("model.layers.46.eh_proj.weight", glm); // The MTP layer follows the 46 main ones.
        Assert.DoesNotContain("model.layers.0.mlp.experts.0.down_proj.weight", glm);
        Assert.Equal(94 * (4 + 2 + 2 + 1 + 128 * 3) + 3, ModelPresets.Qwen3.Inventory.Tensors.Count);
    }

    [Theory]
    [InlineData("GLM-4.5-Air", "glm-4.5-air")]
    [InlineData("Qwen/Qwen3-235B-A22B", "qwen3-235b-a22b")]
    [InlineData("deepseek-v3.1", "deepseek-v3.1")]
    [InlineData("Kimi-K2-Instruct", "kimi-k2")]
    public void Find_AcceptsCommonSpellings(string spelling, string preset) => Assert.Equal(preset, ModelPresets.Find(spelling)?.Name);

    [Fact]
    public void FromCheckpoint_ReadsADirectoryAsItsHeadersSayAndRoundTripsAScaledPreset()
    {
        using var dir = new TempDirectory();
        PresetSample.Write(dir.Path, ModelPresets.DeepSeekV31, 8L << 20, shards: 3);
        var read = ModelInventory.FromCheckpoint(dir.Path);
        var expected = InventoryBuilder.Build("x", PresetSample.Fit(ModelPresets.DeepSeekV31, 8L << 20));
        Assert.Equal(expected.Tensors.Select(t => (t.Name, t.DType, t.ByteLength)), read.Tensors.Select(t => (t.Name, t.DType, t.ByteLength)));
        Assert.True(read.TotalBytes <= 8L << 20);
        Assert.Contains(read.Tensors, t => t.Name.EndsWith("weight_scale_inv", StringComparison.Ordinal));
        Assert.Equal(3, Directory.GetFiles(dir.Path, "*.safetensors").Length);
    }

    [Fact]
    public void Scaled_KeepsDenseLayersFirstAndWidthsMultiplesOfTheScaleBlock()
    {
        var a = ModelPresets.DeepSeekV31.Architecture.Scaled(8, layers: 4, experts: 8);
        Assert.Equal((4, 1, 8), (a.Layers, a.DenseLayers, a.RoutedExperts));
        Assert.Equal(0, a.HiddenSize % MoeArchitecture.ScaleBlock);
        Assert.Equal(7168 / 8 / 128 * 128, a.HiddenSize);
    }
}
