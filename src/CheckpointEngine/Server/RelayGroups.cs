using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// The sub-groups through which a shard-aware update moves parts between hosts (see <see cref="ClassRelay"/>): per
/// stager host, the group of its members and one group per class that has members elsewhere; and, where this member
/// is a proxy, a buffer for the parts it relays. Made once per group, hosts and classes, and kept while they stay the
/// same (creating groups costs round trips, and on GPUs communicators).
/// </summary>
internal sealed class RelayGroups : IDisposable
{
    private readonly Dictionary<int, ClassRelay> _relays = [];
    private readonly Dictionary<int, ICommunicator> _local = [];
    private readonly Dictionary<int, List<(ClassRelay.Relay Relay, ICommunicator Group)>> _class = [];
    private readonly DeviceBuffer _shared;
    private readonly IDevice _device;
    private DeviceBuffer? _proxyBuffer;
    private long _proxyStride;
    private (List<H2DBucket> Buckets, ProxyPart?[] Parts)? _proxyPlan;

    private RelayGroups(string key, int[] hostOf, int member, DeviceBuffer shared, IDevice device)
    {
        Key = key;
        HostOf = hostOf;
        Member = member;
        _shared = shared;
        _device = device;
    }

    /// <summary>What the groups were made for: the group's name and members, every member's host and class, and the stagers' hosts.</summary>
    public string Key { get; }

    /// <summary>Member → host index.</summary>
    public int[] HostOf { get; }

    /// <summary>This member's rank in the update's group.</summary>
    public int Member { get; }

    public static string KeyFor(ICommunicator group, int[] hostOf, int[] classOf, int[] stagerHosts) =>
        $"{group.Name}[{string.Join(',', group.Members)}] hosts {string.Join(',', hostOf)} classes {string.Join(',', classOf)} from {string.Join(',', stagerHosts)}";

    /// <summary>
    /// Makes this member's groups for buckets staged on <paramref name="stagerHosts"/> (ascending), in an order every member follows
    /// (host by host: its local group, then the relays by class), and offers them the device buffer's shared memory.
    /// </summary>
    public static async Task<RelayGroups> CreateAsync(ICommunicator group, int[] hostOf, int[] classOf, int[] stagerHosts, DeviceBuffer shared, IDevice device,
        TimeSpan timeout, CancellationToken ct)
    {
        var groups = new RelayGroups(KeyFor(group, hostOf, classOf, stagerHosts), hostOf, group.Rank, shared, device);
        try
        {
            foreach (var host in stagerHosts)
            {
                var relay = ClassRelay.For(host, hostOf, classOf)!;
                groups._relays[host] = relay;
                if (relay.Local.Contains(group.Rank))
                {
                    groups._local[host] = await Make($"relay-h{host}", relay.Local).ConfigureAwait(false);
                }
                var mine = groups._class[host] = [];
                foreach (var r in relay.RelaysOf(group.Rank))
                {
                    mine.Add((r, await Make($"relay-h{host}-c{r.Class}", r.Members).ConfigureAwait(false)));
                }
            }
            return groups;
        }
        catch
        {
            groups.Dispose();
            throw;
        }

        async Task<ICommunicator> Make(string name, int[] members)
        {
            var sub = await group.CreateSubGroupAsync(name, members, timeout, ct).ConfigureAwait(false);
            sub.Share(shared);
            return sub;
        }
    }

    /// <summary>Per bucket, its relay where one applies and pays (see <see cref="ClassRelay.Pays"/>); null where it goes the plain way.</summary>
    public ClassRelay?[] Routes(List<BucketStep> steps, IReadOnlyList<long[]> classBytes) =>
        [.. steps.Select((s, k) => _relays.GetValueOrDefault(HostOf[s.Stager]) is { } r && r.Pays(classBytes[k], s.Bucket.Size, HostOf) ? r : null)];

    /// <summary>The group of the members on <paramref name="host"/> (this member is one of them).</summary>
    public ICommunicator Local(int host) => _local[host];

    /// <summary>This member's relays for buckets staged on <paramref name="host"/>, ascending by class.</summary>
    public IReadOnlyList<(ClassRelay.Relay Relay, ICommunicator Group)> Relays(int host) => _class.GetValueOrDefault(host) ?? [];

    /// <summary>
    /// The parts this member relays as a proxy, per bucket (null where none), packed one class after another, and where they lie:
    /// planned once per bucket layout, with <paramref name="copies"/> buffers as large as the largest (one per bucket in flight), the
    /// first at Buffer and each <c>Stride</c> bytes after the one before.
    /// </summary>
    public (ProxyPart?[] Parts, nint Buffer, long Stride) ProxyParts(List<BucketStep> steps, ClassRelay?[] routes, IReadOnlyList<WorkerWants?> classes, int copies = 1)
    {
        if (_proxyPlan is not { } plan || !ParameterServer.SameLayout(plan.Buckets, steps))
        {
            var parts = steps.Select((s, k) => routes[k]?.ProxiedBy(Member).ToList() is { Count: > 0 } proxied ? ProxyPart.Of(s.Bucket, proxied, classes) : null).ToArray();
            plan = (steps.Select(s => s.Bucket).ToList(), parts);
            _proxyPlan = plan;
            _proxyStride = BucketSizing.Align(parts.Max(p => p?.Size ?? 0));
        }
        if (_proxyStride * copies > (_proxyBuffer?.Size ?? 0))
        {
            _proxyBuffer?.Dispose();
            _proxyBuffer = _device.AllocateShared(_proxyStride * copies);
        }
        return (plan.Parts, _proxyBuffer?.Address ?? 0, _proxyStride);
    }

    public long NetworkBytesReceived => Groups.Sum(g => g.NetworkBytesReceived);

    public long BytesReceived => Groups.Sum(g => g.BytesReceived);

    public IReadOnlyList<LinkTransfer> TakeLinkTransfers() => [.. Groups.SelectMany(g => g.TakeLinkTransfers())];

    private IEnumerable<ICommunicator> Groups => _local.Values.Concat(_class.Values.SelectMany(l => l.Select(x => x.Group)));

    public void Dispose()
    {
        foreach (var g in Groups.ToList())
        {
            g.Unshare(_shared);
            g.Dispose();
        }
        _local.Clear();
        _class.Clear();
        _proxyBuffer?.Dispose();
        _proxyBuffer = null;
    }
}

/// <summary>The parts of the classes a proxy relays from one bucket: runs cutting them out of it, and each class's place in the packed result.</summary>
internal sealed record ProxyPart(IReadOnlyList<ByteRun> Runs, IReadOnlyDictionary<int, (long Offset, long Size)> Classes, long Size)
{
    public static ProxyPart Of(H2DBucket bucket, IEnumerable<ClassRelay.Relay> proxied, IReadOnlyList<WorkerWants?> classes)
    {
        var runs = new List<ByteRun>();
        var places = new Dictionary<int, (long, long)>();
        long at = 0;
        foreach (var r in proxied)
        {
            // A class that declared nothing takes the whole bucket: copied too, since the proxy may cut its own part in place.
            var (partRuns, size) = classes[r.Class] is { } wants && BucketPart.Of(bucket, wants) is var part
                ? (part.Runs, part.Size)
                : ([new ByteRun(0, 0, bucket.Size)], bucket.Size);
            at = BucketSizing.Align(at);
            runs.AddRange(partRuns.Select(run => run with { Destination = at + run.Destination }));
            places[r.Class] = (at, size);
            at += size;
        }
        return new ProxyPart(runs, places, at);
    }
}
