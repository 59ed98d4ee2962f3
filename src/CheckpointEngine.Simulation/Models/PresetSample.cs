using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Simulation.Models;

/// <summary>
/// Writes a small checkpoint shaped like a preset, for demos and benchmarks with a realistic mix of tensor
/// sizes: the preset's names and dtypes (FP8 weights with their block scales included), its first layers
/// (dense ones first) and first experts, widths divided until the whole fits the target size.
/// </summary>
public static class PresetSample
{
    /// <summary>The preset's architecture, cut to at most <paramref name="layers"/> layers and <paramref name="experts"/> experts and narrowed until its checkpoint is at most <paramref name="targetBytes"/> (or as small as it gets).</summary>
    public static MoeArchitecture Fit(ModelPreset preset, long targetBytes, int layers = 4, int experts = 8)
    {
        long Bytes(int shrink) => InventoryBuilder.Build(preset.Name, preset.Architecture.Scaled(shrink, layers, experts)).TotalBytes;
        int low = 1, high = 1;
        while (Bytes(high) > targetBytes && high < 1 << 16)
        {
            low = high;
            high *= 2;
        }
        while (low < high)
        {
            var mid = (low + high) / 2;
            if (Bytes(mid) > targetBytes) low = mid + 1; else high = mid;
        }
        return preset.Architecture.Scaled(high, layers, experts);
    }

    public static IReadOnlyList<string> Write(string directory, ModelPreset preset, long targetBytes, int shards = 4, int layers = 4, ulong seed = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(shards, 1);
        var inventory = InventoryBuilder.Build(preset.Name, Fit(preset, targetBytes, layers));
        Directory.CreateDirectory(directory);
        // Contiguous runs of names of about equal bytes per file, as published checkpoints are sharded.
        var perShard = Math.Max(1, inventory.TotalBytes / shards);
        var files = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var index = 0UL;
        var pending = new List<TensorToWrite>();
        long bytes = 0;
        void Flush()
        {
            var name = $"model-{files.Count + 1:D5}-of-{shards:D5}.safetensors";
            var path = Path.Combine(directory, name);
            SafeTensorsWriter.Write(path, pending, new Dictionary<string, string> { ["format"] = "pt" });
            files.Add(path);
            pending.ForEach(t => weightMap[t.Name] = name);
            pending = [];
            bytes = 0;
        }
        foreach (var t in inventory.Tensors)
        {
            pending.Add(new TensorToWrite(t.Name, t.DType, [.. t.Shape], SampleCheckpoint.Filler(SampleCheckpoint.Mix(seed, ++index), t.ByteLength, t.DType)));
            bytes += t.ByteLength;
            if (bytes >= perShard && files.Count < shards - 1)
            {
                Flush();
            }
        }
        if (pending.Count > 0 || files.Count == 0)
        {
            Flush();
        }
        // Names carry the planned shard count; fewer files (a tiny sample) are renamed to match.
        if (files.Count != shards)
        {
            var renamed = new List<string>();
            foreach (var f in files)
            {
                var fixedName = Path.GetFileName(f).Replace($"-of-{shards:D5}", $"-of-{files.Count:D5}", StringComparison.Ordinal);
                var target = Path.Combine(directory, fixedName);
                File.Move(f, target, overwrite: true);
                foreach (var key in weightMap.Where(kv => kv.Value == Path.GetFileName(f)).Select(kv => kv.Key).ToList())
                {
                    weightMap[key] = fixedName;
                }
                renamed.Add(target);
            }
            files = renamed;
        }
        SampleCheckpoint.WriteIndex(Path.Combine(directory, Checkpoint.IndexFileName), weightMap, inventory.TotalBytes);
        return files;
    }
}
