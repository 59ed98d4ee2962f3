using System.Diagnostics;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Quantization;

/// <summary>
/// <c>update --quantize fp8</c> through real rank processes: an engine served from a BF16 checkpoint
/// ends up holding exactly what <c>ckpt-engine quantize</c> writes (FP8 weights and their scales),
/// with no patch to the engine.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class QuantizedUpdateTests : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly string _id = Guid.NewGuid().ToString("N")[..8];
    private Process? _worker;

    public void Dispose()
    {
        if (_worker is { HasExited: false })
        {
            _worker.Kill(entireProcessTree: true);
            _worker.WaitForExit();
        }
        _worker?.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public async Task UpdateQuantizeFp8_TwoRanks_EngineHoldsWhatQuantizeWrites()
    {
        var source = WriteBf16Checkpoint(_dir.SubDirectory("bf16"));
        var quantized = Path.Combine(_dir.Path, "fp8");
        var (code, output, error) = await CkptEngineScript.RunAsync("quantize", source, quantized);
        Assert.True(code == 0, error + output);
        var expected = Digests(quantized);
        Assert.Contains(expected.Keys, k => k.EndsWith(".weight_scale_inv", StringComparison.Ordinal)); // Something was quantized.

        var url = await StartWorkerAsync();
        var env = new Dictionary<string, string> { ["CKPT_ENGINE_DEVICE_ID"] = $"fp8-{_id}-{{local_rank}}" };
        (code, output, error) = await CkptEngineScript.RunAsync(env, null, "launch", "--nproc", "2", "--", "update", "--checkpoint-path", source,
            "--endpoint", url, "--inference-parallel-size", "2", "--timeout", "60", "--quantize", "fp8");

        Assert.True(code == 0, $"update exited {code}:\n{error}{output}");
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var doc = await http.GetFromJsonAsync<JsonElement>(url + "/v1/weights/digest", TestContext.Current.CancellationToken);
        var shards = doc.GetProperty("shards").EnumerateArray().ToList();
        Assert.Equal(2, shards.Count);
        foreach (var shard in shards)
        {
            var held = shard.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString()!);
            Assert.Equal(expected.OrderBy(kv => kv.Key, StringComparer.Ordinal), held.OrderBy(kv => kv.Key, StringComparer.Ordinal));
        }
    }

    /// <summary>A small transformer-shaped BF16 checkpoint: linear weights (odd shapes too), an embedding, a norm and a bias, split over two files.</summary>
    private static string WriteBf16Checkpoint(string dir)
    {
        var rng = new Random(11);
        TensorToWrite Bf16(string name, params long[] shape)
        {
            var count = shape.Aggregate(1L, (a, b) => a * b);
            var bytes = new byte[count * 2];
            for (var i = 0; i < count; i++)
            {
                BitConverter.TryWriteBytes(bytes.AsSpan((int)(i * 2)), BitConverter.HalfToUInt16Bits((Half)0) | (ushort)(BitConverter.SingleToUInt32Bits((float)(rng.NextDouble() * 2 - 1) * 3) >> 16));
            }
            return TensorToWrite.FromBytes(name, DType.BF16, shape, bytes);
        }
        SafeTensorsWriter.Write(Path.Combine(dir, "model-00001-of-00002.safetensors"),
            [Bf16("model.embed_tokens.weight", 64, 96), Bf16("model.layers.0.self_attn.q_proj.weight", 256, 96), Bf16("model.layers.0.input_layernorm.weight", 96)]);
        SafeTensorsWriter.Write(Path.Combine(dir, "model-00002-of-00002.safetensors"),
            [Bf16("model.layers.0.mlp.down_proj.weight", 96, 200), Bf16("model.layers.0.mlp.up_proj.weight", 200, 96), Bf16("model.layers.0.mlp.up_proj.bias", 200)]);
        return dir;
    }

    private static Dictionary<string, string> Digests(string dir)
    {
        using var checkpoint = Checkpoint.Open(dir);
        return checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => Convert.ToHexStringLower(SHA256.HashData(e.File.View(e.Tensor).Span)));
    }

    private async Task<string> StartWorkerAsync()
    {
        var psi = RankCluster.Start(["cli", "worker", "--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", $"fp8-{_id}-0,fp8-{_id}-1"]);
        _worker = Process.Start(psi)!;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(30));
        while (true)
        {
            var line = await _worker.StandardOutput.ReadLineAsync(cts.Token) ?? throw new InvalidOperationException("worker exited: " + await _worker.StandardError.ReadToEndAsync(cts.Token));
            if (line.StartsWith("listening on ", StringComparison.Ordinal))
            {
                return line["listening on ".Length..].Trim().TrimEnd('/');
            }
        }
    }
}
