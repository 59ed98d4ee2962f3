using CheckpointEngine.Hosting;
using System.CommandLine;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Cli.Commands;

/// <summary><c>ckpt-engine sample DIR</c>: writes a small sharded checkpoint to try the other commands on.</summary>
internal static class SampleCommand
{
    public static Command Create(TextWriter stdout)
    {
        var dir = new Argument<string>("dir") { Description = "directory to write the checkpoint into (created if missing)" };
        var size = new Option<int>("--size-mb") { Description = "approximate checkpoint size in MiB", DefaultValueFactory = _ => 32 };
        var shards = new Option<int>("--shards") { Description = "number of safetensors files", DefaultValueFactory = _ => 4 };
        var layers = new Option<int>("--layers") { Description = "transformer layers", DefaultValueFactory = _ => 4 };
        var seed = new Option<ulong>("--seed") { Description = "seed of the deterministic contents", DefaultValueFactory = _ => 1 };
        var model = ModelOption.Create();
        size.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--size-mb must be at least 1"); });
        shards.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--shards must be at least 1"); });
        layers.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--layers must be at least 1"); });
        var command = new Command("sample", "Write a sample sharded checkpoint (mixed dtypes, with an index).") { dir, size, shards, layers, seed, model };
        command.SetAction(result =>
        {
            var path = result.GetValue(dir)!;
            var target = (long)result.GetValue(size) << 20;
            var files = ModelOption.Write(result.GetValue(model), path, target, result.GetValue(shards), result.GetValue(layers), result.GetValue(seed));
            var bytes = files.Sum(f => new FileInfo(f).Length);
            stdout.WriteLine($"wrote {files.Count} files ({ByteSize.Format(bytes)}) and {Checkpoint.IndexFileName} to {path}");
            return 0;
        });
        return command;
    }
}
