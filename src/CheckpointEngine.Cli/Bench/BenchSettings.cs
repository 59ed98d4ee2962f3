using CheckpointEngine.Hosting;
using System.Globalization;
using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// What <c>ckpt-engine bench</c> measures: every combination of ranks × size × method, each measured
/// <see cref="Repeat"/> + 1 times (the first is a warm-up). The methods are whole updates (broadcast, p2p),
/// registration into host memory and FP8 quantization (once per size: they run in the bench process) and a
/// raw collective broadcast (rank counts of 2 and more). The list parsers report the bad element.
/// </summary>
/// <param name="TraceDirectory">Where each configuration's last update is written as a trace (trace-METHOD-Nr-SIZE.json), or null.</param>
internal sealed record BenchSettings(IReadOnlyList<int> Ranks, IReadOnlyList<long> Sizes, IReadOnlyList<string> Methods, long? BucketSize, int Repeat, string? TraceDirectory = null,
    Runtime.DeviceKind Device = Runtime.DeviceKind.Host, string? Model = null)
{
    /// <summary>
    /// Whether the ranks prepare the update (see <see cref="Server.ParameterServer.PrepareAsync"/>) before their first one, as a serving rank
    /// does ahead of it: the first update then runs with the workers' mappings in place. False: the first update maps them itself, as a
    /// one-shot <c>update</c> runs it.
    /// </summary>
    public bool Prepare { get; init; } = true;

    /// <summary>
    /// Each rank of an update configuration poses as its own host (its own <see cref="Runtime.RankConfig.HostIdVariable"/>): buckets cross
    /// loopback TCP as between hosts (shard-aware ones by class relays), and workers cannot read the owners' memory in place.
    /// </summary>
    public bool SeparateHosts { get; init; }

    public const int MaxRanks = 64;
    public const int MaxRepeat = 100;
    public const long MinSize = 1L << 20;
    public const string Registration = "registration";
    public const string Collective = "collective";
    public const string Quantize = "quantize";

    /// <summary>The methods that are whole updates, as <c>update --update-method</c> names them.</summary>
    /// <remarks>
    /// <c>verify</c> is a broadcast update whose workers check every tensor's CRC-32 (<c>update --verify</c>): against the same run's broadcast rows it gives the cost of verification.
    /// <c>tp-full</c> and <c>tp-sharded</c> are broadcast updates of a worker whose shards keep their tensor-parallel slices (<c>worker --shard-by-tp</c>):
    /// it receives every byte and cuts its slices out, or it declares them and receives only those (shard-aware; from the second update, once it has seen the layout).
    /// </remarks>
    /// <c>p2p-tcp</c> and <c>p2p-ucx</c> are P2P updates over one transport (what <c>--p2p-transport tcp,ucx</c> turns <c>p2p</c> into).
    /// <c>p2p-join</c>: an elastic join. As many owner ranks as joiners register the checkpoint, gather and save its metas and serve;
    /// the joiners (another world) load the metas and update the worker over P2P, reading from the owners.
    public static readonly string[] UpdateMethods = ["broadcast", "p2p", P2PTcp, P2PUcx, Verify, TpFull, TpSharded, P2PJoin];

    public const string P2PJoin = "p2p-join";

    public const string P2PTcp = "p2p-tcp";

    public const string P2PUcx = "p2p-ucx";

    /// <summary>Whether a method is a P2P update, and over which transport ("tcp", "ucx"; null: the ranks' default).</summary>
    public static bool IsP2P(string method, out string? transport)
    {
        transport = method switch { P2PTcp => "tcp", P2PUcx => "ucx", _ => null };
        return method is "p2p" or P2PJoin || transport is not null;
    }

    /// <summary>The methods with "p2p" replaced by one P2P method per transport of <paramref name="transports"/> (comma-separated tcp, ucx, auto).</summary>
    public static bool TryExpandTransports(IReadOnlyList<string> methods, string? transports, out IReadOnlyList<string> expanded, out string error)
    {
        expanded = methods;
        error = "";
        if (transports is null)
        {
            return true;
        }
        var list = new List<string>();
        foreach (var item in Items(transports))
        {
            if (item is not ("tcp" or "ucx" or "auto"))
            {
                error = $"--p2p-transport: '{item}' is not a P2P transport (tcp, ucx or auto)";
                return false;
            }
            list.Add(item == "auto" ? "p2p" : $"p2p-{item}");
        }
        expanded = [.. methods.SelectMany(m => m == "p2p" ? list : [m]).Distinct(StringComparer.Ordinal)];
        return true;
    }

    public const string Verify = "verify";

    public const string TpFull = "tp-full";

    public const string TpSharded = "tp-sharded";

    public static readonly string[] KnownMethods = [.. UpdateMethods, Registration, Collective, Quantize];

    /// <summary>Whether a method reads the synthetic checkpoint (the collective broadcasts a bare buffer).</summary>
    public static bool NeedsCheckpoint(string method) => method != Collective;

    /// <summary>Ranks like "1,2,4": each in [1, <see cref="MaxRanks"/>], no repeats.</summary>
    public static bool TryParseRanks(string text, out IReadOnlyList<int> ranks, out string error)
    {
        var list = new List<int>();
        ranks = list;
        foreach (var item in Items(text))
        {
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n is < 1 or > MaxRanks)
            {
                error = $"--ranks: '{item}' is not a rank count in [1, {MaxRanks}]";
                return false;
            }
            list.Add(n);
        }
        return Check("--ranks", text, list, out error);
    }

    /// <summary>Sizes like "256MiB,2GiB" (units as for <c>demo --size</c>): each at least 1 MiB, no repeats.</summary>
    public static bool TryParseSizes(string text, out IReadOnlyList<long> sizes, out string error)
    {
        var list = new List<long>();
        sizes = list;
        foreach (var item in Items(text))
        {
            if (!ByteSize.TryParse(item, out var bytes) || bytes < MinSize)
            {
                error = $"--size: '{item}' is not a size of at least 1MiB (e.g. 256MiB, 2GiB)";
                return false;
            }
            list.Add(bytes);
        }
        return Check("--size", text, list, out error);
    }

    /// <summary>Methods like "broadcast,p2p,registration,collective,quantize".</summary>
    public static bool TryParseMethods(string text, out IReadOnlyList<string> methods, out string error)
    {
        var list = new List<string>();
        methods = list;
        foreach (var item in Items(text))
        {
            if (!KnownMethods.Contains(item, StringComparer.Ordinal))
            {
                error = $"--method: '{item}' is not one of {string.Join(", ", KnownMethods)}";
                return false;
            }
            list.Add(item);
        }
        return Check("--method", text, list, out error);
    }

    /// <summary>The flags together: a collective broadcast needs receivers, so at least one rank count of 2 or more.</summary>
    public static bool TryCheck(IReadOnlyList<int> ranks, IReadOnlyList<string> methods, out string error)
    {
        ArgumentNullException.ThrowIfNull(ranks);
        ArgumentNullException.ThrowIfNull(methods);
        error = "";
        if (methods.Contains(Collective, StringComparer.Ordinal) && !ranks.Any(r => r >= 2))
        {
            error = $"--method {Collective} broadcasts from rank 0 to the others: give --ranks with a count of at least 2 (got --ranks {string.Join(',', ranks)})";
            return false;
        }
        return true;
    }

    /// <summary>A size as it was asked for: 256MiB, 2GiB, 1.5GiB; plain bytes otherwise.</summary>
    public static string SizeLabel(long bytes)
    {
        foreach (var (suffix, unit) in new[] { ("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10) })
        {
            if (bytes >= unit && bytes * 10 % unit == 0)
            {
                return (bytes / (double)unit).ToString("0.#", CultureInfo.InvariantCulture) + suffix;
            }
        }
        return bytes.ToString(CultureInfo.InvariantCulture) + "B";
    }

    private static IEnumerable<string> Items(string text) =>
        string.IsNullOrWhiteSpace(text) ? [] : text.Split(',').Select(s => s.Trim());

    private static bool Check<T>(string flag, string text, List<T> list, out string error)
    {
        error = "";
        if (list.Count == 0)
        {
            error = $"{flag}: give at least one value";
            return false;
        }
        if (list.Distinct().Count() != list.Count)
        {
            error = $"{flag}: '{text}' lists a value twice";
            return false;
        }
        return true;
    }
}
