using System.Collections.Immutable;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace CheckpointEngine.Quantization;

/// <summary>
/// Block-scaled FP8 in the DeepSeek-V3 / Kimi-K2 convention: which tensors are quantized and with
/// which block. A selected <c>X.weight</c> becomes F8_E4M3 of the same shape plus
/// <c>X.weight_scale_inv</c> (F32, <c>[ceil(rows / BlockRows), ceil(cols / BlockCols)]</c>). Selected:
/// 2-D BF16, F16 or F32 tensors named <c>*.weight</c> with elements, except embeddings (a name part
/// containing "embed", or <c>wte</c>/<c>wpe</c>), the LM head (<c>lm_head</c>), norms (a part containing
/// "norm"), MoE routers (a part <c>gate</c>, ending in <c>_gate</c>, or containing "router"), modules
/// listed in <see cref="ModulesToNotConvert"/> (as Hugging Face matches them: the entry appears in the
/// module name) and names <see cref="Skip"/> matches. Biases are never selected (not <c>.weight</c>).
/// </summary>
public sealed class Fp8Quantization
{
    public const int DefaultBlockSize = 128;
    public const int MaxBlockSize = 1 << 16;
    public const string ScaleSuffix = "_scale_inv";
    public const string ConfigFileName = "config.json";

    private const string WeightSuffix = ".weight";
    private readonly Regex? _skip;

    public Fp8Quantization(int blockRows = DefaultBlockSize, int blockCols = DefaultBlockSize, string? skip = null, IEnumerable<string>? modulesToNotConvert = null)
    {
        foreach (var b in new[] { blockRows, blockCols })
        {
            if (b is < 1 or > MaxBlockSize)
            {
                throw new CheckpointEngineException($"FP8 block size {b} is not in [1, {MaxBlockSize}]");
            }
        }
        BlockRows = blockRows;
        BlockCols = blockCols;
        if (skip is not null)
        {
            try
            {
                _skip = new Regex(skip, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
            }
            catch (ArgumentException e)
            {
                throw new CheckpointEngineException($"skip pattern '{skip}' is not a valid regular expression: {e.Message}");
            }
        }
        Skip = skip;
        ModulesToNotConvert = [.. modulesToNotConvert ?? []];
    }

    public int BlockRows { get; }

    public int BlockCols { get; }

    /// <summary>A regular expression; tensors whose name it matches (anywhere) are left as they are.</summary>
    public string? Skip { get; }

    public ImmutableArray<string> ModulesToNotConvert { get; }

    public static string ScaleName(string weightName) => weightName + ScaleSuffix;

    public long[] ScaleShape(long rows, long cols) => [(rows + BlockRows - 1) / BlockRows, (cols + BlockCols - 1) / BlockCols];

    /// <summary>Whether the tensor is quantized (see the class summary for the rule).</summary>
    public bool Selects(string name, DType dtype, ReadOnlySpan<long> shape) =>
        IsLinearWeight(name, dtype, shape) && !ModulesToNotConvert.Any(m => ModuleOf(name).Contains(m, StringComparison.Ordinal)) && _skip?.IsMatch(name) != true;

    /// <summary>The module a weight belongs to: its name without <c>.weight</c>.</summary>
    public static string ModuleOf(string weightName) =>
        weightName.EndsWith(WeightSuffix, StringComparison.Ordinal) ? weightName[..^WeightSuffix.Length] : weightName;

    /// <summary>What the fixed rules select, before the skip pattern and the modules not to convert.</summary>
    internal static bool IsLinearWeight(string name, DType dtype, ReadOnlySpan<long> shape)
    {
        if (!Fp8BlockQuantizer.Supports(dtype) || shape.Length != 2 || shape[0] == 0 || shape[1] == 0 || !name.EndsWith(WeightSuffix, StringComparison.Ordinal))
        {
            return false;
        }
        var module = name[..^WeightSuffix.Length];
        foreach (var part in module.Split('.'))
        {
            if (part.Contains("embed", StringComparison.Ordinal) || part.Contains("norm", StringComparison.Ordinal) || part.Contains("router", StringComparison.Ordinal)
                || part is "lm_head" or "wte" or "wpe" or "gate" || part.EndsWith("_gate", StringComparison.Ordinal))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// The quantization for a checkpoint: its Hugging Face <c>config.json</c> (beside the files, or in the
    /// directory given) is followed where it has a <c>quantization_config</c>: <c>weight_block_size</c>
    /// unless <paramref name="blockSize"/> is given (a different one is an error), and
    /// <c>modules_to_not_convert</c>. A <c>quant_method</c> other than fp8 is an error.
    /// </summary>
    /// <param name="allowed">When given (files named by an API client), the config must lie inside too.</param>
    public static Fp8Quantization ForCheckpoint(string path, int? blockSize = null, string? skip = null, Checkpoints.AllowedDirectories? allowed = null)
    {
        var directory = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        var config = Path.Combine(directory, ConfigFileName);
        if (blockSize is < 1)
        {
            throw new CheckpointEngineException($"FP8 block size {blockSize} is not in [1, {MaxBlockSize}]");
        }
        var (rows, cols) = (blockSize ?? DefaultBlockSize, blockSize ?? DefaultBlockSize);
        List<string> notConvert = [];
        if (File.Exists(config) && ReadQuantizationConfig(config, allowed) is { } q)
        {
            if (q.TryGetProperty("quant_method", out var method) && method.ValueKind == JsonValueKind.String && method.GetString() != "fp8")
            {
                throw new CheckpointEngineException($"{config}: quantization_config.quant_method is '{method.GetString()}'; only fp8 checkpoints can be quantized further");
            }
            if (q.TryGetProperty("weight_block_size", out var b) && b.ValueKind != JsonValueKind.Null)
            {
                if (b.ValueKind != JsonValueKind.Array || b.GetArrayLength() != 2 || b.EnumerateArray().Any(d => !d.TryGetInt32(out var v) || v < 1))
                {
                    throw new CheckpointEngineException($"{config}: quantization_config.weight_block_size must be two positive whole numbers, not {b.GetRawText()}");
                }
                var (r, c) = (b[0].GetInt32(), b[1].GetInt32());
                if (blockSize is { } given && (given != r || given != c))
                {
                    throw new CheckpointEngineException($"{config}: quantization_config.weight_block_size is [{r}, {c}], but block size {given} was asked for");
                }
                (rows, cols) = (r, c);
            }
            if (q.TryGetProperty("modules_to_not_convert", out var m) && m.ValueKind != JsonValueKind.Null)
            {
                if (m.ValueKind != JsonValueKind.Array || m.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
                {
                    throw new CheckpointEngineException($"{config}: quantization_config.modules_to_not_convert must be a list of module names, not {m.GetRawText()}");
                }
                notConvert.AddRange(m.EnumerateArray().Select(e => e.GetString()!).Where(s => s.Length > 0));
            }
        }
        return new Fp8Quantization(rows, cols, skip, notConvert);
    }

    /// <summary>Largest config.json read; real ones are a few KiB.</summary>
    private const long MaxConfigBytes = 16 << 20;

    private static JsonElement? ReadQuantizationConfig(string config, Checkpoints.AllowedDirectories? allowed)
    {
        // A regular file only (a FIFO named config.json must not hang a registration), and small.
        var bytes = Checkpoints.RegularFile.ReadAllBytes(config, MaxConfigBytes, allowed);
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("quantization_config", out var q) && q.ValueKind == JsonValueKind.Object
                ? q.Clone()
                : null;
        }
        catch (JsonException e)
        {
            // Only where: the parser's text quotes the offending character of a file a client may have named.
            throw new CheckpointEngineException($"{config}: not valid JSON{(e.LineNumber is { } line ? $" (line {line + 1})" : "")}");
        }
    }
}
