using System.CommandLine;
using System.Diagnostics;
using CheckpointEngine.Hosting;
using CheckpointEngine.Quantization;

namespace CheckpointEngine.Cli.Commands;

/// <summary><c>ckpt-engine quantize SRC DST [--block 128] [--skip REGEX]</c>: writes a block-scaled FP8 copy of a checkpoint.</summary>
internal static class QuantizeCommand
{
    public static Command Create(TextWriter stdout)
    {
        var source = new Argument<string>("src") { Description = "checkpoint directory (with or without an index, and its config.json) or one safetensors file" };
        var destination = new Argument<string>("dst") { Description = "new or empty directory for the FP8 checkpoint" };
        var block = new Option<int?>("--block") { Description = $"block size (rows and columns) of one scale (default: config.json's weight_block_size, else {Fp8Quantization.DefaultBlockSize})" };
        var skip = new Option<string?>("--skip") { Description = "regular expression: tensors whose name it matches stay as they are" };
        block.Validators.Add(r => { if (r.GetValueOrDefault<int?>() is { } b && b is < 1 or > Fp8Quantization.MaxBlockSize) r.AddError($"--block must be in [1, {Fp8Quantization.MaxBlockSize}], not {b}"); });
        var command = new Command("quantize", "Write a block-quantized FP8 (E4M3, DeepSeek-V3 convention) copy of a BF16/F16/F32 checkpoint.") { source, destination, block, skip };
        command.SetAction(result =>
        {
            var src = result.GetValue(source)!;
            if (!Directory.Exists(src) && !File.Exists(src))
            {
                throw new CheckpointEngineException($"{src}: no such file or directory");
            }
            var fp8 = Fp8Quantization.ForCheckpoint(src, result.GetValue(block), result.GetValue(skip));
            var clock = Stopwatch.StartNew();
            var r = Fp8CheckpointWriter.Write(src, result.GetValue(destination)!, fp8);
            stdout.WriteLine($"quantized {r.Quantized} weights ({ByteSize.Format(r.QuantizedSourceBytes)}) to F8_E4M3 with {fp8.BlockRows}x{fp8.BlockCols} blocks; " +
                $"wrote {r.Files} files ({r.Tensors} tensors, {ByteSize.Format(r.OutputBytes)}), the index{(r.Copied.Count > 0 ? " and " + string.Join(", ", r.Copied) : "")} to {result.GetValue(destination)} in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
