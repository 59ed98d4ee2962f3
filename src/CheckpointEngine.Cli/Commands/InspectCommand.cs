using CheckpointEngine.Hosting;
using System.CommandLine;
using System.Text.Json;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Cli.Commands;

/// <summary><c>ckpt-engine inspect PATH... [--json]</c>: lists the tensors of files or checkpoint directories.</summary>
internal static class InspectCommand
{
    public static Command Create(TextWriter stdout)
    {
        var paths = new Argument<string[]>("paths")
        {
            Description = "safetensors files or checkpoint directories (with or without an index)",
            Arity = ArgumentArity.OneOrMore,
        };
        var json = new Option<bool>("--json") { Description = "print one JSON object instead of a table" };
        var command = new Command("inspect", "List the tensors of safetensors files or checkpoint directories.") { paths, json };
        command.SetAction(result =>
        {
            using var checkpoint = Checkpoint.Open(result.GetValue(paths)!);
            if (result.GetValue(json))
            {
                WriteJson(checkpoint, stdout);
            }
            else
            {
                WriteTable(checkpoint, stdout);
            }
            return 0;
        });
        return command;
    }

    private static void WriteJson(Checkpoint checkpoint, TextWriter stdout)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("files");
            foreach (var f in checkpoint.Files)
            {
                w.WriteStringValue(f.Path);
            }
            w.WriteEndArray();
            w.WriteStartArray("tensors");
            foreach (var f in checkpoint.Files)
            {
                foreach (var t in f.Tensors)
                {
                    TensorJson.Write(w, t.Name, t.DType, t.Shape, t.DataOffset, t.ByteLength, f.Path);
                }
            }
            w.WriteEndArray();
            w.WriteNumber("total_bytes", checkpoint.TotalBytes);
            w.WriteEndObject();
        }
        stdout.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
    }

    private static void WriteTable(Checkpoint checkpoint, TextWriter stdout)
    {
        var nameWidth = Math.Min(64, checkpoint.Files.SelectMany(f => f.Tensors).Select(t => t.Name.Length).DefaultIfEmpty(4).Max());
        foreach (var f in checkpoint.Files)
        {
            stdout.WriteLine($"{f.Path}  ({f.Tensors.Count} tensors, {ByteSize.Format(f.DataLength)}{(f.Header.Metadata is { Count: > 0 } m ? ", metadata: " + string.Join(", ", m.Select(kv => $"{kv.Key}={kv.Value}")) : "")})");
            foreach (var t in f.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
            {
                stdout.WriteLine($"  {t.Name.PadRight(nameWidth)}  {t.DType.Name(),-11}  {t.ShapeText,-16}  {ByteSize.Format(t.ByteLength),10}");
            }
        }
        stdout.WriteLine($"total: {checkpoint.Files.Count} files, {checkpoint.TensorCount} tensors, {ByteSize.Format(checkpoint.TotalBytes)}");
    }

}
