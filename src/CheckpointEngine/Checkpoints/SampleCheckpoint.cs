using System.Buffers.Binary;
using System.Text.Json;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// Generates a small transformer-shaped checkpoint (sharded, with an index) for the quick start,
/// tests and benchmarks: BF16 projections, F8_E4M3 MLP weights with F32 scales on odd layers, F32
/// norms, an I64 and a BOOL buffer, a scalar and a zero-element tensor. Contents are deterministic
/// for a seed, so digests can be compared across runs and machines.
/// </summary>
public static class SampleCheckpoint
{
    public static IReadOnlyList<string> Write(string directory, long targetBytes = 32L << 20, int shards = 4, int layers = 4, ulong seed = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(targetBytes, 1L << 16);
        ArgumentOutOfRangeException.ThrowIfLessThan(shards, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(layers, 1);
        if (shards > layers)
        {
            throw new CheckpointEngineException($"{shards} shards for {layers} layers: every shard holds at least one layer");
        }
        Directory.CreateDirectory(directory);
        // Per layer: 4 h² attention + 3 × 4h² MLP at ≤ 2 bytes; embeddings and head: 2 × 8h² at 2 bytes.
        var h = Math.Max(64, (long)Math.Sqrt(targetBytes / (layers * 32.0 + 32)) / 64 * 64);
        var perShard = Math.Max(1, (layers + shards - 1) / shards);
        var shardTensors = Enumerable.Range(0, shards).Select(_ => new List<TensorToWrite>()).ToArray();
        var index = 0UL;
        TensorToWrite Random(string name, DType dtype, params long[] shape) => new(name, dtype, shape, Filler(Mix(seed, ++index), dtype.ByteLength(shape), dtype));

        shardTensors[0].AddRange([
            Random("model.embed_tokens.weight", DType.BF16, 8 * h, h),
            Random("model.rotary_emb.position_ids", DType.I64, 256),
            Random("model.causal_mask", DType.BOOL, 16, 16),
            Random("model.step", DType.I64),
            Random("model.empty_adapter", DType.F16, 0, h),
        ]);
        for (var l = 0; l < layers; l++)
        {
            var p = $"model.layers.{l}.";
            var target = shardTensors[Math.Min(shards - 1, l / perShard)];
            target.AddRange([
                Random(p + "input_layernorm.weight", DType.F32, h),
                Random(p + "post_attention_layernorm.weight", DType.F32, h),
                Random(p + "self_attn.q_proj.weight", DType.BF16, h, h),
                Random(p + "self_attn.k_proj.weight", DType.BF16, h, h),
                Random(p + "self_attn.v_proj.weight", DType.BF16, h, h),
                Random(p + "self_attn.o_proj.weight", DType.BF16, h, h),
            ]);
            var mlp = l % 2 == 1 ? DType.F8_E4M3 : DType.BF16;
            foreach (var (name, shape) in new[] { ("gate_proj", new[] { 4 * h, h }), ("up_proj", new[] { 4 * h, h }), ("down_proj", new[] { h, 4 * h }) })
            {
                target.Add(Random(p + $"mlp.{name}.weight", mlp, shape));
                if (mlp == DType.F8_E4M3)
                {
                    target.Add(Random(p + $"mlp.{name}.weight_scale", DType.F32));
                }
            }
        }
        shardTensors[^1].AddRange([
            Random("model.norm.weight", DType.F32, h),
            Random("lm_head.weight", DType.BF16, 8 * h, h),
        ]);

        var files = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (var s = 0; s < shards; s++)
        {
            var name = $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            var path = Path.Combine(directory, name);
            SafeTensorsWriter.Write(path, shardTensors[s], new Dictionary<string, string> { ["format"] = "pt" });
            files.Add(path);
            foreach (var t in shardTensors[s])
            {
                weightMap[t.Name] = name;
            }
        }
        WriteIndex(Path.Combine(directory, Checkpoint.IndexFileName), weightMap, shardTensors.Sum(s => s.Sum(t => t.ByteLength)));
        return files;
    }

    internal static void WriteIndex(string path, SortedDictionary<string, string> weightMap, long totalSize)
    {
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteStartObject("metadata");
        w.WriteNumber("total_size", totalSize);
        w.WriteEndObject();
        w.WriteStartObject("weight_map");
        foreach (var (k, v) in weightMap)
        {
            w.WriteString(k, v);
        }
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>A stream seed per (checkpoint seed, tensor): no two seeds share streams (splitmix64 finalizer).</summary>
    internal static ulong Mix(ulong seed, ulong tensor)
    {
        var z = seed * 0x9E3779B97F4A7C15UL + tensor * 0xD1B54A32D192ED03UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>
    /// Streams <paramref name="length"/> pseudo-random bytes (xorshift64*, stable across .NET versions). BOOL
    /// tensors get 0 or 1 per byte: engines normalise any other byte to 1 when they copy, so random bytes
    /// would not survive a round trip through a torch model.
    /// </summary>
    internal static Action<Stream> Filler(ulong seed, long length, DType dtype = DType.U8) => stream =>
    {
        var state = seed * 0x9E3779B97F4A7C15UL | 1;
        var chunk = new byte[Math.Min(length, 1 << 20)];
        for (var left = length; left > 0;)
        {
            var n = (int)Math.Min(left, chunk.Length);
            for (var i = 0; i < n; i += 8)
            {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                var v = state * 0x2545F4914F6CDD1DUL;
                if (i + 8 <= n)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(chunk.AsSpan(i), v);
                }
                else
                {
                    for (var j = i; j < n; j++, v >>= 8)
                    {
                        chunk[j] = (byte)v;
                    }
                }
            }
            if (dtype == DType.BOOL)
            {
                for (var j = 0; j < n; j++)
                {
                    chunk[j] &= 1;
                }
            }
            stream.Write(chunk, 0, n);
            left -= n;
        }
    };
}
