using CheckpointEngine.Planning;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Server;

/// <summary>
/// The sub-groups through which a shard-aware update moves parts between hosts (see <see cref="ClassRelay"/>): per
/// stager host, the group of its members and one group per class that has members elsewhere. Made once per group,
/// hosts and classes, and kept while they stay the same (creating groups costs round trips, and on GPUs communicators).
/// </summary>
internal sealed class RelayGroups : IDisposable
{
    private readonly Dictionary<int, ClassRelay> _relays = [];
    private readonly Dictionary<int, ICommunicator> _local = [];
    private readonly Dictionary<int, ICommunicator> _class = [];
    private readonly DeviceBuffer _shared;

    private RelayGroups(string key, int[] hostOf, DeviceBuffer shared)
    {
        Key = key;
        HostOf = hostOf;
        _shared = shared;
    }

    /// <summary>What the groups were made for: the group's name and members, and every member's host and class.</summary>
    public string Key { get; }

    /// <summary>Member → host index.</summary>
    public int[] HostOf { get; }

    public static string KeyFor(ICommunicator group, int[] hostOf, int[] classOf, int[] stagerHosts) =>
        $"{group.Name}[{string.Join(',', group.Members)}] hosts {string.Join(',', hostOf)} classes {string.Join(',', classOf)} from {string.Join(',', stagerHosts)}";

    /// <summary>
    /// Makes this member's groups for buckets staged on <paramref name="stagerHosts"/> (ascending), in an order every member follows
    /// (host by host: its local group, then its classes' relays), and offers them the device buffer's shared memory.
    /// </summary>
    public static async Task<RelayGroups> CreateAsync(ICommunicator group, int[] hostOf, int[] classOf, int[] stagerHosts, DeviceBuffer shared,
        TimeSpan timeout, CancellationToken ct)
    {
        var groups = new RelayGroups(KeyFor(group, hostOf, classOf, stagerHosts), hostOf, shared);
        try
        {
            foreach (var host in stagerHosts)
            {
                if (ClassRelay.For(host, hostOf, classOf) is not { } relay)
                {
                    continue;
                }
                groups._relays[host] = relay;
                if (relay.Local.Contains(group.Rank))
                {
                    groups._local[host] = await Make($"relay-h{host}", relay.Local).ConfigureAwait(false);
                }
                if (relay.RelayOf(group.Rank) is { } members)
                {
                    groups._class[host] = await Make($"relay-h{host}-c{classOf[members[0]]}", members).ConfigureAwait(false);
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

    /// <summary>The relay of a bucket staged by <paramref name="stager"/>, or null when it goes the plain way.</summary>
    public ClassRelay? For(int stager) => _relays.GetValueOrDefault(HostOf[stager]);

    /// <summary>Per bucket, its relay where one applies and pays (see <see cref="ClassRelay.Pays"/>); null where it goes the plain way.</summary>
    public ClassRelay?[] Routes(List<BucketStep> steps, IReadOnlyList<long[]> classBytes) =>
        [.. steps.Select((s, k) => For(s.Stager) is { } r && r.Pays(classBytes[k], s.Bucket.Size, HostOf) ? r : null)];

    /// <summary>The group of the members on <paramref name="host"/> (this member is one of them).</summary>
    public ICommunicator Local(int host) => _local[host];

    /// <summary>This member's class relay for buckets staged on <paramref name="host"/>, or null when it takes no part in one.</summary>
    public ICommunicator? Relay(int host) => _class.GetValueOrDefault(host);

    public long NetworkBytesReceived => _local.Values.Concat(_class.Values).Sum(g => g.NetworkBytesReceived);

    public void Dispose()
    {
        foreach (var g in _local.Values.Concat(_class.Values))
        {
            g.Unshare(_shared);
            g.Dispose();
        }
        _local.Clear();
        _class.Clear();
    }
}
