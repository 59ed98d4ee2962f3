using System.Security.Cryptography;
using System.Text.Json;

namespace CheckpointEngine.Worker;

/// <summary>A range of indices along one dimension: <see cref="Start"/> and the <see cref="Length"/> that follow.</summary>
public readonly record struct SliceRange(long Start, long Length)
{
    public long End => Start + Length;

    public override string ToString() => $"[{Start}, {End})";
}

/// <summary>What a worker keeps of one checkpoint tensor: all of it, none of it, or slices along one dimension.</summary>
public sealed record TensorWant
{
    private TensorWant(WantKind kind, int dimension, IReadOnlyList<SliceRange> slices)
    {
        Kind = kind;
        Dimension = dimension;
        Slices = slices;
    }

    public static TensorWant Whole { get; } = new(WantKind.Whole, 0, []);

    public static TensorWant None { get; } = new(WantKind.None, 0, []);

    public WantKind Kind { get; }

    /// <summary>The dimension the <see cref="Slices"/> run along (0: rows of a matrix, 1: its columns).</summary>
    public int Dimension { get; }

    public IReadOnlyList<SliceRange> Slices { get; }

    /// <summary>The indices <paramref name="slices"/> along <paramref name="dimension"/>, e.g. the rows of a column-parallel projection a tensor-parallel rank keeps.</summary>
    public static TensorWant Along(int dimension, params IReadOnlyList<SliceRange> slices) => new(WantKind.Slices, dimension, [.. slices]);

    public bool Equals(TensorWant? other) =>
        other is not null && Kind == other.Kind && Dimension == other.Dimension && Slices.SequenceEqual(other.Slices);

    public override int GetHashCode() => HashCode.Combine(Kind, Dimension, Slices.Count);

    /// <summary>The elements before dimension <paramref name="dim"/> (how many times it repeats) and after it (one index's worth).</summary>
    internal static (long Outer, long Inner) Around(IReadOnlyList<long> shape, int dim)
    {
        long outer = 1, inner = 1;
        for (var i = 0; i < shape.Count; i++)
        {
            if (i < dim)
            {
                outer *= shape[i];
            }
            else if (i > dim)
            {
                inner *= shape[i];
            }
        }
        return (outer, inner);
    }

    public override string ToString() => Kind switch
    {
        WantKind.Slices => $"dimension {Dimension}: {string.Join(", ", Slices)}",
        _ => Kind.ToString().ToLowerInvariant(),
    };
}

public enum WantKind
{
    Whole,
    None,
    Slices,
}

/// <summary>
/// What a worker declares it keeps of a checkpoint, per tensor name, sent once per update right after
/// its session key. Tensors it does not name get <see cref="Others"/> (whole, by default). A worker that
/// declares nothing gets every byte, as before. The parameter server checks the declaration against the
/// checkpoint and fails the attach on every rank, naming the worker, the tensor and the problem, when it
/// does not fit. Wire form (JSON): <c>{"others": "whole"|"none", "tensors": {name: "whole" | "none" |
/// {"dim": d, "slices": [[start, length], ...]}}}</c>.
/// </summary>
public sealed class WorkerWants
{
    public WorkerWants(IReadOnlyDictionary<string, TensorWant> tensors, TensorWant? others = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        Others = others ?? TensorWant.Whole;
        if (Others.Kind == WantKind.Slices)
        {
            throw new ArgumentException("tensors the declaration does not name can be kept whole or not at all, not sliced", nameof(others));
        }
        _lookup = new Dictionary<string, TensorWant>(tensors, StringComparer.Ordinal);
        Tensors = new SortedDictionary<string, TensorWant>(_lookup, StringComparer.Ordinal);
    }

    /// <summary>For lookups: planning asks once per tensor of the checkpoint and class (Kimi-K2: 140k tensors).</summary>
    private readonly Dictionary<string, TensorWant> _lookup;

    /// <summary>What happens to tensors the declaration does not name: <see cref="TensorWant.Whole"/> or <see cref="TensorWant.None"/>.</summary>
    public TensorWant Others { get; }

    /// <summary>The declaration per tensor name (in ordinal order).</summary>
    public IReadOnlyDictionary<string, TensorWant> Tensors { get; }

    public TensorWant For(string tensor) => _lookup.TryGetValue(tensor, out var want) ? want : Others;

    /// <summary>
    /// Why <paramref name="want"/> cannot be cut out of a tensor of <paramref name="dtype"/> and
    /// <paramref name="shape"/>, or null when it can: a dimension out of range, a slice out of bounds,
    /// empty or overlapping another, or one whose bytes would not be whole (sub-byte dtypes).
    /// </summary>
    public static string? Problem(TensorWant want, DType dtype, IReadOnlyList<long> shape)
    {
        if (want.Kind != WantKind.Slices)
        {
            return null;
        }
        var d = want.Dimension;
        if (d < 0 || d >= shape.Count)
        {
            return $"dimension {d} is out of range for shape [{string.Join(", ", shape)}]";
        }
        if (want.Slices.Count == 0)
        {
            return $"no slices along dimension {d} (declare \"none\" to keep nothing)";
        }
        var (outer, inner) = TensorWant.Around(shape, d);
        var unitBits = inner * dtype.BitSize(); // The bits of one index along the dimension.
        if (outer > 1 && shape[d] * unitBits % 8 != 0)
        {
            return $"dimension {d} cannot be sliced: its rows of {shape[d] * unitBits} bits do not start on whole bytes ({dtype.Name()} is {dtype.BitSize()} bits an element)";
        }
        SliceRange? previous = null;
        foreach (var s in want.Slices.OrderBy(s => s.Start))
        {
            if (s.Length <= 0 || s.Start < 0 || s.End > shape[d])
            {
                return $"slice {s} of dimension {d} is {(s.Length <= 0 ? "empty" : "outside")} [0, {shape[d]})";
            }
            if (previous is { } p && s.Start < p.End)
            {
                return $"slices {p} and {s} of dimension {d} overlap";
            }
            if (s.Start * unitBits % 8 != 0 || s.Length * unitBits % 8 != 0)
            {
                return $"slice {s} of dimension {d} does not fall on whole bytes ({dtype.Name()} is {dtype.BitSize()} bits an element)";
            }
            previous = s;
        }
        return null;
    }

    /// <summary>Every problem of this declaration against a checkpoint's tensors, each naming the tensor (empty when it fits).</summary>
    public IReadOnlyList<string> Problems(IReadOnlyDictionary<string, (DType DType, IReadOnlyList<long> Shape)> checkpoint)
    {
        var problems = new List<string>();
        foreach (var (name, want) in Tensors)
        {
            if (!checkpoint.TryGetValue(name, out var tensor))
            {
                problems.Add($"tensor '{name}' is not in the checkpoint");
            }
            else if (Problem(want, tensor.DType, tensor.Shape) is { } why)
            {
                problems.Add($"tensor '{name}': {why}");
            }
        }
        return problems;
    }

    /// <summary>
    /// The SHA-256 (hex) of the canonical wire form: workers with equal declarations have equal digests,
    /// so ranks can tell which of them want the same bytes by exchanging 64 characters, not the lists.
    /// </summary>
    public string Digest() => _digest ??= Convert.ToHexStringLower(SHA256.HashData(ToJson()));

    /// <summary>The wire form; canonical (names in ordinal order, slices sorted). Made once: a declaration is immutable.</summary>
    public byte[] ToJson() => _json ??= Serialize();

    private string? _digest;
    private byte[]? _json;

    private byte[] Serialize()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteString("others", Others.ToString());
            w.WriteStartObject("tensors");
            foreach (var (name, want) in Tensors)
            {
                if (want.Kind != WantKind.Slices)
                {
                    w.WriteString(name, want.ToString());
                    continue;
                }
                w.WriteStartObject(name);
                w.WriteNumber("dim", want.Dimension);
                w.WriteStartArray("slices");
                foreach (var s in want.Slices.OrderBy(s => s.Start))
                {
                    w.WriteStartArray();
                    w.WriteNumberValue(s.Start);
                    w.WriteNumberValue(s.Length);
                    w.WriteEndArray();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    /// <summary>Parses the wire form; <see cref="InvalidDataException"/> says what is wrong and where.</summary>
    public static WorkerWants Parse(ReadOnlySpan<byte> json)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray());
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"wants are not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"wants must be a JSON object, not {root.ValueKind}");
            }
            var others = root.TryGetProperty("others", out var o) ? Keyword(o, "others") : TensorWant.Whole;
            var tensors = new Dictionary<string, TensorWant>(StringComparer.Ordinal);
            if (root.TryGetProperty("tensors", out var list))
            {
                if (list.ValueKind != JsonValueKind.Object)
                {
                    throw new InvalidDataException($"wants: \"tensors\" must be an object mapping tensor names to wants, not {list.ValueKind}");
                }
                foreach (var entry in list.EnumerateObject())
                {
                    if (!tensors.TryAdd(entry.Name, Want(entry.Value, entry.Name)))
                    {
                        throw new InvalidDataException($"wants: tensor '{entry.Name}' appears twice");
                    }
                }
            }
            return new WorkerWants(tensors, others);
        }
    }

    private static TensorWant Keyword(JsonElement value, string where) => value.ValueKind == JsonValueKind.String && value.GetString() is "whole" or "none"
        ? value.GetString() == "whole" ? TensorWant.Whole : TensorWant.None
        : throw new InvalidDataException($"wants: {where} must be \"whole\" or \"none\", not {value.GetRawText()}");

    private static TensorWant Want(JsonElement value, string tensor)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            return Keyword(value, $"tensor '{tensor}'");
        }
        if (!value.TryGetProperty("dim", out var dim) || dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt32(out var d)
            || !value.TryGetProperty("slices", out var slices) || slices.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidDataException($"wants: tensor '{tensor}' must be \"whole\", \"none\" or {{\"dim\": d, \"slices\": [[start, length], ...]}}");
        }
        var ranges = new List<SliceRange>();
        foreach (var s in slices.EnumerateArray())
        {
            if (s.ValueKind != JsonValueKind.Array || s.GetArrayLength() != 2 || s[0].ValueKind != JsonValueKind.Number || s[1].ValueKind != JsonValueKind.Number
                || !s[0].TryGetInt64(out var start) || !s[1].TryGetInt64(out var length))
            {
                throw new InvalidDataException($"wants: tensor '{tensor}': each slice must be [start, length] in integers, not {s.GetRawText()}");
            }
            ranges.Add(new SliceRange(start, length));
        }
        return TensorWant.Along(d, ranges);
    }
}
