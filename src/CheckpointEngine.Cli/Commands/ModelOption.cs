using System.CommandLine;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>--model NAME</c>: shape a synthetic checkpoint like a model preset (its tensor names, dtypes and block
/// scales; its first layers and experts, narrowed to the size), for <c>sample</c>, <c>demo</c> and <c>bench</c>.
/// </summary>
internal static class ModelOption
{
    public static Option<string?> Create()
    {
        var names = string.Join(", ", ModelPresets.All.Select(p => p.Name));
        var option = new Option<string?>("--model")
        {
            Description = $"shape the checkpoint like a model preset ({names}): its names and dtypes, its first layers and experts, narrowed to the size",
        };
        option.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<string?>() is { } m && ModelPresets.Find(m) is null)
            {
                r.AddError($"--model {m}: unknown preset; presets: {names}");
            }
        });
        return option;
    }

    /// <summary>Writes the synthetic checkpoint: the generic transformer sample, or one shaped like <paramref name="model"/>.</summary>
    public static IReadOnlyList<string> Write(string? model, string dir, long bytes, int shards, int layers, ulong seed = 1) =>
        model is null
            ? SampleCheckpoint.Write(dir, bytes, shards, layers, seed)
            : PresetSample.Write(dir, ModelPresets.Find(model) ?? throw new CheckpointEngineException($"--model {model}: unknown preset"), bytes, shards, layers, seed);
}
