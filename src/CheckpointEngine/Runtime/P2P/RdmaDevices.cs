using System.Globalization;
using System.Text.RegularExpressions;

namespace CheckpointEngine.Runtime.P2P;

/// <summary>An RDMA device (HCA) and, if chosen, its port: <c>mlx5_0</c> or <c>mlx5_0:1</c>.</summary>
public readonly record struct RdmaDevice(string Name, int? Port = null)
{
    public override string ToString() => Port is { } p ? $"{Name}:{p}" : Name;
}

/// <summary>
/// Which RDMA devices a rank's P2P reads use, as the original chooses them: a list in NCCL_IB_HCA's
/// syntax (<c>PS_P2P_STORE_RDMA_DEVICES</c>, else <c>NCCL_IB_HCA</c>) filters the devices in sysfs, and
/// each rank takes the device nearest to it (sharing the PCI switch of its GPU, else its NUMA node),
/// or, without topology to go by, an even share by local rank. The result becomes UCX's
/// <c>NET_DEVICES</c>.
/// </summary>
public static partial class RdmaDevices
{
    public const string Variable = "PS_P2P_STORE_RDMA_DEVICES";
    public const string NcclVariable = "NCCL_IB_HCA";

    /// <summary>NCCL takes at most this many HCAs from a list; so does the original.</summary>
    public const int MaxDevices = 32;

    /// <summary>
    /// Filters <paramref name="available"/> by <paramref name="spec"/>: comma-separated names, each a prefix
    /// unless the list starts with <c>=</c> (exact names); a leading <c>^</c> (before any <c>=</c>) excludes
    /// them instead; <c>name:port</c> picks a port. Blank: every device. Entries that match nothing are
    /// skipped (clusters differ per node); in <paramref name="available"/>'s order, at most <see cref="MaxDevices"/>.
    /// </summary>
    /// <exception cref="CheckpointEngineException">A port that is not a positive number, naming the entry and <paramref name="source"/>.</exception>
    public static IReadOnlyList<RdmaDevice> Parse(string? spec, IReadOnlyList<string> available, string source = Variable)
    {
        var text = spec?.Trim() ?? "";
        if (text.Length == 0)
        {
            return [.. available.Take(MaxDevices).Select(n => new RdmaDevice(n))];
        }
        var exclude = text.StartsWith('^');
        text = exclude ? text[1..] : text;
        var exact = text.StartsWith('=');
        text = exact ? text[1..] : text;
        var entries = new List<(string Name, int? Port)>();
        foreach (var entry in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var colon = entry.IndexOf(':', StringComparison.Ordinal);
            int? port = null;
            if (colon >= 0)
            {
                port = int.TryParse(entry[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var p) && p > 0
                    ? p
                    : throw new CheckpointEngineException($"{source}: '{entry}' has no valid port after ':' (a positive number, e.g. mlx5_0:1)");
            }
            entries.Add((colon >= 0 ? entry[..colon].Trim() : entry, port));
        }
        bool Matches(string device, string name) => exact ? device == name : device.StartsWith(name, StringComparison.Ordinal);
        var result = exclude
            ? available.Where(d => !entries.Any(e => Matches(d, e.Name))).Select(d => new RdmaDevice(d))
            : available.Select(d => (Device: d, Entry: entries.FirstOrDefault(e => Matches(d, e.Name))))
                .Where(x => x.Entry.Name is not null)
                .Select(x => new RdmaDevice(x.Device, x.Entry.Port));
        return [.. result.Take(MaxDevices)];
    }

    /// <summary>The RDMA devices under <paramref name="sysfs"/> (<c>class/infiniband</c>), sorted by name; none when there is no such folder.</summary>
    public static IReadOnlyList<string> Available(string sysfs = "/sys")
    {
        var dir = Path.Combine(sysfs, "class", "infiniband");
        return Directory.Exists(dir) ? [.. Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal)] : [];
    }

    /// <summary>
    /// The devices of local rank <paramref name="localRank"/> of <paramref name="localRanks"/> among
    /// <paramref name="candidates"/>: those sharing the most of the PCI path of <paramref name="pciAddress"/>
    /// (its GPU), then its NUMA node, shared out by local rank when several are equally near; without a
    /// PCI address, the original's rule: ranks share devices in even, contiguous groups (or each rank
    /// takes an even share when there are more devices than ranks). Ports not given become the first active one.
    /// </summary>
    public static IReadOnlyList<RdmaDevice> ForRank(IReadOnlyList<RdmaDevice> candidates, int localRank, int localRanks, string? pciAddress = null, string sysfs = "/sys")
    {
        if (candidates.Count == 0)
        {
            return [];
        }
        IReadOnlyList<RdmaDevice> chosen;
        var local = pciAddress is null ? null : PciPath(Path.Combine(sysfs, "bus", "pci", "devices", pciAddress));
        if (local is not null)
        {
            var localNuma = Numa(Path.Combine(sysfs, "bus", "pci", "devices", pciAddress!));
            var scored = candidates.Select(c =>
            {
                var device = Path.Combine(sysfs, "class", "infiniband", c.Name, "device");
                var path = PciPath(device) ?? [];
                var shared = path.Zip(local).TakeWhile(p => p.First == p.Second).Count();
                return (Device: c, Score: shared * 2 + (localNuma is not null && Numa(device) == localNuma ? 1 : 0));
            }).ToList();
            var best = scored.Max(s => s.Score);
            var nearest = scored.Where(s => s.Score == best).Select(s => s.Device).ToList();
            chosen = [nearest[localRank % nearest.Count]];
        }
        else if (candidates.Count <= localRanks)
        {
            chosen = [candidates[localRanks % candidates.Count == 0 ? localRank / (localRanks / candidates.Count) : localRank % candidates.Count]];
        }
        else
        {
            var share = candidates.Count / localRanks;
            chosen = [.. candidates.Skip(localRank * share).Take(share)];
        }
        return [.. chosen.Select(d => d.Port is null ? d with { Port = ActivePort(sysfs, d.Name) } : d)];
    }

    /// <summary>UCX's <c>NET_DEVICES</c> value for <paramref name="devices"/> (every device needs a port there).</summary>
    public static string ToUcxNetDevices(IEnumerable<RdmaDevice> devices) => string.Join(',', devices.Select(d => d with { Port = d.Port ?? 1 }));

    /// <summary>The chain of PCI addresses from the root complex down to the device (its resolved sysfs path), or null.</summary>
    private static string[]? PciPath(string device)
    {
        try
        {
            var target = new DirectoryInfo(device).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? (Directory.Exists(device) ? Path.GetFullPath(device) : null);
            return target?.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(p => PciComponent().IsMatch(p)).ToArray();
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>A root complex (<c>pci0000:00</c>) or a PCI function (<c>0000:3b:00.0</c>) in a sysfs device path.</summary>
    [GeneratedRegex(@"^(pci[0-9a-f]{4}:[0-9a-f]{2}|[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])$")]
    private static partial Regex PciComponent();

    private static string? Numa(string device)
    {
        var file = Path.Combine(device, "numa_node");
        return File.Exists(file) && File.ReadAllText(file).Trim() is { Length: > 0 } n && n != "-1" ? n : null;
    }

    /// <summary>The lowest port whose state is ACTIVE (sysfs <c>ports/N/state</c> reads "4: ACTIVE"); 1 when none says so.</summary>
    private static int ActivePort(string sysfs, string device)
    {
        var ports = Path.Combine(sysfs, "class", "infiniband", device, "ports");
        if (!Directory.Exists(ports))
        {
            return 1;
        }
        return Directory.EnumerateDirectories(ports)
            .Select(d => (Port: int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out var p) ? p : 0, State: Path.Combine(d, "state")))
            .Where(p => p.Port > 0 && File.Exists(p.State) && File.ReadAllText(p.State).Contains("ACTIVE", StringComparison.Ordinal))
            .Select(p => p.Port)
            .DefaultIfEmpty(1)
            .Min();
    }
}
