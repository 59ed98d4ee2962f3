using System.Text.Json;
using System.Text.Json.Nodes;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Quantization;

/// <summary>
/// <c>ckpt-engine quantize SRC DST</c>: writes a block-scaled FP8 copy of a checkpoint. Each source file
/// becomes a file of the same name holding its tensors, selected weights as F8_E4M3 with their
/// <c>_scale_inv</c> beside them; then <c>model.safetensors.index.json</c> for every file, and the other
/// files of the source directory (tokenizer, generation config) copied, <c>config.json</c> with a
/// <c>quantization_config</c> that says what was done. Tensors are read from the read-only mapping and
/// written through one reused native buffer; nothing of their size goes through the GC heap.
/// </summary>
public static unsafe class Fp8CheckpointWriter
{
    /// <summary>Source bytes encoded per step of a weight (whole row blocks; at least one).</summary>
    private const long ChunkBytes = 64L << 20;

    /// <summary>What was written.</summary>
    /// <param name="Quantized">Weights turned into F8_E4M3 (each with its scale tensor).</param>
    /// <param name="QuantizedSourceBytes">The source bytes of those weights.</param>
    public sealed record Result(int Files, int Tensors, int Quantized, long QuantizedSourceBytes, long OutputBytes, IReadOnlyList<string> Copied);

    public static Result Write(string source, string destination, Fp8Quantization fp8, int threads = 0)
    {
        ArgumentNullException.ThrowIfNull(fp8);
        threads = threads > 0 ? threads : Environment.ProcessorCount;
        if (!Directory.Exists(source) && !File.Exists(source))
        {
            throw new CheckpointEngineException($"{source}: no such file or directory");
        }
        if (File.Exists(destination) || (Directory.Exists(destination) && Directory.EnumerateFileSystemEntries(destination).Any()))
        {
            throw new CheckpointEngineException($"{destination}: exists and is not an empty directory; the FP8 checkpoint needs a new or empty one");
        }
        using var checkpoint = Checkpoint.Open(source);
        var outputs = checkpoint.Files.GroupBy(f => Path.GetFileName(f.Path), StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (outputs is not null)
        {
            throw new CheckpointEngineException($"{source}: two files are named {outputs.Key}; the FP8 checkpoint keeps file names, so they must differ");
        }
        foreach (var (file, t) in checkpoint.AllTensors())
        {
            var scale = Fp8Quantization.ScaleName(t.Name);
            if (fp8.Selects(t.Name, t.DType, t.Shape.AsSpan()) && checkpoint.TryGetTensor(scale, out _, out _))
            {
                throw new CheckpointFormatException(file.Path, $"is selected for FP8, but a tensor '{scale}' already exists", t.Name);
            }
        }
        var created = !Directory.Exists(destination);
        Directory.CreateDirectory(destination);
        try
        {
            return WriteAll(checkpoint, Directory.Exists(source) ? source : null, destination, fp8, threads);
        }
        catch
        {
            // Half a checkpoint must not pass for a whole one.
            if (created)
            {
                Directory.Delete(destination, recursive: true);
            }
            else
            {
                foreach (var entry in Directory.EnumerateFileSystemEntries(destination))
                {
                    if (Directory.Exists(entry))
                    {
                        Directory.Delete(entry, recursive: true);
                    }
                    else
                    {
                        File.Delete(entry);
                    }
                }
            }
            throw;
        }
    }

    private static Result WriteAll(Checkpoint checkpoint, string? sourceDirectory, string destination, Fp8Quantization fp8, int threads)
    {
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var (tensors, quantized, quantizedBytes, outputBytes) = (0, 0, 0L, 0L);
        using var chunk = new Scratch();
        foreach (var file in checkpoint.Files)
        {
            var name = Path.GetFileName(file.Path);
            var scales = new Dictionary<string, Scratch>(StringComparer.Ordinal);
            try
            {
                var toWrite = new List<TensorToWrite>();
                foreach (var t in file.Tensors)
                {
                    if (!fp8.Selects(t.Name, t.DType, t.Shape.AsSpan()))
                    {
                        toWrite.Add(new TensorToWrite(t.Name, t.DType, [.. t.Shape], s => WriteBytes(s, file.View(t).Pointer, t.ByteLength)));
                        continue;
                    }
                    var q = new Fp8Tensor((nint)file.View(t).Pointer, t.DType, t.Shape[0], t.Shape[1], fp8.BlockRows, fp8.BlockCols, 0);
                    var scaleShape = fp8.ScaleShape(q.Rows, q.Cols);
                    var scale = scales[t.Name] = new Scratch();
                    scale.Ensure(DType.F32.ByteLength(scaleShape));
                    q = q with { Scales = (nint)scale.Pointer };
                    // The writer puts F32 before F8 tensors, so the scales come first: a pass of their own.
                    toWrite.Add(new TensorToWrite(Fp8Quantization.ScaleName(t.Name), DType.F32, scaleShape, s =>
                    {
                        var job = q;
                        Parallel.For(0, job.RowBlocks, new ParallelOptions { MaxDegreeOfParallelism = threads }, rb => Fp8BlockQuantizer.ScaleRowBlock(job, rb));
                        WriteBytes(s, scale.Pointer, DType.F32.ByteLength(scaleShape));
                    }));
                    toWrite.Add(new TensorToWrite(t.Name, DType.F8_E4M3, [.. t.Shape], s => WriteQuantized(s, q, chunk, threads)));
                    quantized++;
                    quantizedBytes += t.ByteLength;
                }
                var path = Path.Combine(destination, name);
                SafeTensorsWriter.Write(path, toWrite, file.Header.Metadata);
                outputBytes += new FileInfo(path).Length;
                tensors += toWrite.Count;
                foreach (var t in toWrite)
                {
                    weightMap[t.Name] = name;
                }
            }
            finally
            {
                foreach (var s in scales.Values)
                {
                    s.Dispose();
                }
            }
        }
        SampleCheckpoint.WriteIndex(Path.Combine(destination, Checkpoint.IndexFileName), weightMap, outputBytes);
        var copied = new List<string>();
        if (sourceDirectory is not null)
        {
            foreach (var f in Directory.GetFiles(sourceDirectory).Order(StringComparer.Ordinal))
            {
                var name = Path.GetFileName(f);
                if (name.EndsWith(".safetensors", StringComparison.Ordinal) || name.EndsWith(".safetensors.index.json", StringComparison.Ordinal))
                {
                    continue;
                }
                if (name == Fp8Quantization.ConfigFileName)
                {
                    WriteConfig(f, Path.Combine(destination, name), checkpoint, fp8);
                }
                else
                {
                    File.Copy(f, Path.Combine(destination, name));
                }
                copied.Add(name);
            }
        }
        return new Result(checkpoint.Files.Count, tensors, quantized, quantizedBytes, outputBytes, copied);
    }

    /// <summary>Encodes a weight a chunk of row blocks at a time (the row blocks of a chunk in parallel) and streams it out.</summary>
    private static void WriteQuantized(Stream stream, Fp8Tensor q, Scratch chunk, int threads)
    {
        var rowBlockBytes = q.BlockRows * q.Cols;
        var perChunk = Math.Max(1, ChunkBytes / (rowBlockBytes * (q.DType == DType.F32 ? 4 : 2)));
        chunk.Ensure(Math.Min(perChunk * rowBlockBytes, q.Rows * q.Cols));
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads };
        var dst = (nint)chunk.Pointer;
        for (long first = 0; first < q.RowBlocks; first += perChunk)
        {
            var start = first;
            var count = Math.Min(perChunk, q.RowBlocks - first);
            Parallel.For(0, count, options, i => Fp8BlockQuantizer.QuantizeRowBlock(q, start + i, (byte*)dst + i * rowBlockBytes));
            var bytes = Enumerable.Range(0, (int)count).Sum(i => q.RowBlockElements(start + i));
            WriteBytes(stream, chunk.Pointer, bytes);
        }
    }

    private static void WriteBytes(Stream stream, byte* pointer, long length)
    {
        for (long done = 0; done < length;)
        {
            var n = (int)Math.Min(length - done, 1 << 30);
            stream.Write(new ReadOnlySpan<byte>(pointer + done, n));
            done += n;
        }
    }

    /// <summary>
    /// The source's config.json with a <c>quantization_config</c> saying what was done: fp8, e4m3, the block,
    /// and in <c>modules_to_not_convert</c> the source's list plus every linear weight left out by the skip
    /// pattern or the list itself (an engine must not look for their scales). Other fields are kept.
    /// </summary>
    private static void WriteConfig(string from, string to, Checkpoint checkpoint, Fp8Quantization fp8)
    {
        JsonObject config;
        try
        {
            config = JsonNode.Parse(File.ReadAllBytes(from)) as JsonObject ?? throw new CheckpointEngineException($"{from}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new CheckpointEngineException($"{from}: not valid JSON: {e.Message.Split(". ")[0]}");
        }
        var q = config["quantization_config"] as JsonObject ?? [];
        q["quant_method"] = "fp8";
        q["fmt"] = "e4m3";
        q["activation_scheme"] ??= "dynamic";
        q["weight_block_size"] = new JsonArray(fp8.BlockRows, fp8.BlockCols);
        var left = checkpoint.AllTensors()
            .Where(x => Fp8Quantization.IsLinearWeight(x.Tensor.Name, x.Tensor.DType, x.Tensor.Shape.AsSpan()) && !fp8.Selects(x.Tensor.Name, x.Tensor.DType, x.Tensor.Shape.AsSpan()))
            .Select(x => Fp8Quantization.ModuleOf(x.Tensor.Name))
            .Where(m => !fp8.ModulesToNotConvert.Any(e => m.Contains(e, StringComparison.Ordinal)));
        var notConvert = fp8.ModulesToNotConvert.Concat(left).Distinct(StringComparer.Ordinal).ToList();
        q.Remove("modules_to_not_convert");
        if (notConvert.Count > 0)
        {
            q["modules_to_not_convert"] = new JsonArray([.. notConvert.Select(m => (JsonNode)m)]);
        }
        config["quantization_config"] = q;
        File.WriteAllText(to, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>A native buffer that grows on demand and is reused in between.</summary>
    private sealed class Scratch : IDisposable
    {
        private NativeBuffer? _buffer;

        public byte* Pointer => _buffer!.Pointer;

        public void Ensure(long bytes)
        {
            if (_buffer is null || _buffer.Capacity < bytes)
            {
                _buffer?.Dispose();
                _buffer = NativeBuffer.Allocate(Math.Max(1, bytes));
            }
        }

        public void Dispose() => _buffer?.Dispose();
    }
}
