using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.Rendezvous;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// The built-in communicator. Control collectives (barrier, all-gather, all-reduce) go through the
/// rendezvous store under the group's own key prefix. Broadcasts move native memory in pipelined
/// chunks: a TCP chain across hosts (root, then one leader per host) and a shared-memory ring from
/// each host's leader to the other ranks on that host.
/// </summary>
public sealed partial class ProcessGroup : ICommunicator
{
    private readonly World _world;
    private readonly IStore _store;
    private readonly ConcurrentDictionary<int, Socket> _outbound = new();
    private readonly List<SharedMemorySegment> _shared = [];
    private readonly Dictionary<string, SharedMemorySegment> _peerSegments = new(StringComparer.Ordinal);
    private Topology? _topology;
    private ShmRing? _ring;
    private long _seq;
    private long _lastStoreSeq;
    private string? _failure;
    private int _disposed;

    /// <summary>The uid of the group of the same name and members made before this one, whose keys this one clears; null for the first.</summary>
    private readonly string? _previousUid;

    private ProcessGroup(World world, string name, string uid, int[] members, string? previousUid = null)
    {
        _previousUid = previousUid;
        _world = world;
        Name = name;
        Uid = uid;
        Members = members;
        Rank = Array.IndexOf(members, world.Rank);
        _store = world.Store.WithPrefix($"g/{uid}/");
    }

    public string Name { get; }

    /// <summary>Unique among groups of this world: name, members and how many such groups came before.</summary>
    internal string Uid { get; }

    public int Rank { get; }

    public int Size => Members.Count;

    public IReadOnlyList<int> Members { get; }

    /// <summary>Creates a group of the given world ranks; every member calls this, in the same order as its other group creations.</summary>
    internal static async Task<ProcessGroup> CreateAsync(World world, string name, int[] members, TimeSpan timeout, CancellationToken ct)
    {
        if (!members.Contains(world.Rank))
        {
            throw new ArgumentException($"rank {world.Rank} is not a member of group '{name}'", nameof(members));
        }
        var key = $"{name}[{string.Join(',', members)}]";
        var generation = world.NextGeneration(key);
        var group = new ProcessGroup(world, name, $"{key}.{generation}", members, generation > 1 ? $"{key}.{generation - 1}" : null);
        try
        {
            await group.ConnectAsync(timeout, ct).ConfigureAwait(false);
            return group;
        }
        catch
        {
            group.Dispose();
            throw;
        }
    }

    internal sealed record MemberInfo(string HostId, string Address, int Port, int Pid, string Nonce);

    /// <summary>The member announcement's JSON contract, generated at compile time (a P2P update makes a group each time).</summary>
    [JsonSerializable(typeof(MemberInfo))]
    internal sealed partial class MemberInfoJson : JsonSerializerContext;

    /// <summary>Learns where every member lives, then sets up the shared-memory ring of this host.</summary>
    private async Task ConnectAsync(TimeSpan timeout, CancellationToken ct)
    {
        var me = new MemberInfo(_world.HostId, _world.DataEndpoint.Address.ToString(), _world.DataEndpoint.Port, Environment.ProcessId,
            Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
        var blobs = await AllGatherAsync(JsonSerializer.SerializeToUtf8Bytes(me, MemberInfoJson.Default.MemberInfo), timeout, ct).ConfigureAwait(false);
        if (_previousUid is { } previous)
        {
            // Every member is here, so every member is done with the previous group of these members (one per P2P
            // update): its last keys, which its members could not drop while another might still read them, go now.
            await _world.Store.DeletePrefixAsync($"g/{previous}/", ct).ConfigureAwait(false);
        }
        var infos = blobs.Select(b => JsonSerializer.Deserialize(b, MemberInfoJson.Default.MemberInfo)!).ToArray();
        _topology = new Topology(infos.Select(i => i.HostId).ToArray(), infos.Select(i => new IPEndPoint(IPAddress.Parse(i.Address), i.Port)).ToArray());
        var local = _topology.LocalMembers(Rank);
        // The barriers are the whole group's: every member takes part when any host has a ring, also a member alone on its host.
        if (_topology.Hosts.Any(h => h.Length > 1))
        {
            var name = $"ckpt-engine-{infos[0].Nonce}-h{_topology.HostOf[Rank]}";
            var worldRanks = local.Select(m => Members[m]).ToArray();
            var localIndex = Array.IndexOf(local, Rank);
            if (localIndex == 0 && local.Length > 1)
            {
                _ring = ShmRing.Create(name, worldRanks, 0);
            }
            await BarrierAsync(timeout, ct).ConfigureAwait(false);
            if (local.Length > 1)
            {
                _ring ??= ShmRing.Open(name, worldRanks, localIndex);
            }
            await BarrierAsync(timeout, ct).ConfigureAwait(false);
            if (localIndex == 0 && local.Length > 1)
            {
                _ring!.Unlink(); // Everyone has it mapped: no name is left behind, whatever happens later.
            }
        }
    }

    public Task BarrierAsync(TimeSpan timeout, CancellationToken ct = default) => AllGatherCoreAsync([], timeout, "barrier", ct);

    public Task<byte[][]> AllGatherAsync(byte[] blob, TimeSpan timeout, CancellationToken ct = default) => AllGatherCoreAsync(blob, timeout, "all-gather", ct);

    public async Task<long[]> AllReduceAsync(long[] values, ReduceOp op, TimeSpan timeout, CancellationToken ct = default)
    {
        var blob = new byte[values.Length * 8];
        for (var i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(blob.AsSpan(i * 8), values[i]);
        }
        var all = await AllGatherCoreAsync(blob, timeout, $"all-reduce ({op})", ct).ConfigureAwait(false);
        var result = (long[])values.Clone();
        for (var r = 0; r < all.Length; r++)
        {
            if (all[r].Length != blob.Length)
            {
                throw Failed($"all-reduce ({op})", [Members[r]], $"rank {Members[r]} passed {all[r].Length / 8} values, this rank {values.Length}");
            }
            for (var i = 0; i < values.Length; i++)
            {
                var v = BinaryPrimitives.ReadInt64LittleEndian(all[r].AsSpan(i * 8));
                result[i] = op switch
                {
                    ReduceOp.Sum => r == 0 ? v : result[i] + v,
                    ReduceOp.Min => r == 0 ? v : Math.Min(result[i], v),
                    ReduceOp.Max => r == 0 ? v : Math.Max(result[i], v),
                    _ => throw new ArgumentOutOfRangeException(nameof(op)),
                };
            }
        }
        return result;
    }

    /// <summary>
    /// Each member sets its key for this call's sequence number and waits for all of them; once all are there the store drops
    /// its key of the previous call that went through the store, which everyone has read by now (collectives run one at a time,
    /// in the same order on every member). All three in one round trip (<see cref="IStore.GatherAsync"/>; three before: about
    /// 1 ms less before an update's first bucket). Broadcasts take sequence numbers too but set no keys, so "the previous
    /// call" is tracked rather than taken to be seq − 1: that left one key behind per broadcast.
    /// </summary>
    private async Task<byte[][]> AllGatherCoreAsync(byte[] blob, TimeSpan timeout, string what, CancellationToken ct)
    {
        var seq = Begin();
        var operation = $"{what} #{seq}";
        try
        {
            var keys = Enumerable.Range(0, Size).Select(r => $"{seq}/{r}").ToList();
            var previous = Interlocked.Read(ref _lastStoreSeq);
            var values = await _store.GatherAsync($"{seq}/{Rank}", blob, previous > 0 ? $"{previous}/{Rank}" : null, keys, timeout, ct).ConfigureAwait(false);
            Interlocked.Exchange(ref _lastStoreSeq, seq);
            return values;
        }
        catch (StoreTimeoutException e)
        {
            var missing = e.MissingKeys.Select(k => int.Parse(k[(k.LastIndexOf('/') + 1)..], System.Globalization.CultureInfo.InvariantCulture)).ToList();
            var late = missing.Select(i => Members[i]).ToList();
            throw Failed(operation, late, $"ranks {string.Join(", ", late)} {OnOtherHosts(missing)}did not arrive within {timeout.TotalSeconds:F1} s", e);
        }
        catch (PeerDiedException e)
        {
            throw Failed(operation, [e.Rank], e.Message, e);
        }
        catch (RendezvousException e)
        {
            // A broken store connection is often the echo of a death the watcher already heard of: say so.
            throw Failed(operation, [], _world.BrokenReason is { } cause ? $"{e.Message} ({cause})" : e.Message, e);
        }
    }

    /// <summary>"(on host 10.0.0.2) " when some of these members live on other hosts than this rank: a partition then names the host it cut off.</summary>
    private string OnOtherHosts(IEnumerable<int> members) =>
        _topology is { } t && members.Where(m => t.HostOf[m] != t.HostOf[Rank]).Select(m => t.Endpoints[m].Address.ToString()).Distinct().ToList() is { Count: > 0 } hosts
            ? $"(on host {string.Join(", ", hosts)}) "
            : "";

    public async Task<ICommunicator> CreateSubGroupAsync(string name, IReadOnlyList<int> groupRanks, TimeSpan timeout, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (groupRanks.Distinct().Count() != groupRanks.Count || groupRanks.Any(r => r < 0 || r >= Size))
        {
            throw new ArgumentException($"sub-group '{name}': ranks [{string.Join(", ", groupRanks)}] must be distinct ranks of group '{Name}' (size {Size})", nameof(groupRanks));
        }
        if (!groupRanks.Contains(Rank))
        {
            throw new ArgumentException($"sub-group '{name}': this rank ({Rank}) is not among [{string.Join(", ", groupRanks)}]; only members create it", nameof(groupRanks));
        }
        return await CreateAsync(_world, $"{Name}/{name}", groupRanks.Select(r => Members[r]).ToArray(), timeout, ct).ConfigureAwait(false);
    }

    /// <summary>Starts a collective: numbers it, and refuses when an earlier one failed (members may disagree on numbering now).</summary>
    private long Begin()
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (_failure is not null)
        {
            throw new CollectiveException("collective", Name, [], $"the group is unusable after an earlier failure: {_failure}");
        }
        return Interlocked.Increment(ref _seq);
    }

    private CollectiveException Failed(string operation, IReadOnlyList<int> ranks, string problem, Exception? inner = null)
    {
        _failure ??= $"{operation}: {problem}";
        return new CollectiveException(operation, Name, ranks, problem, inner);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        foreach (var s in _outbound.Values)
        {
            s.Dispose();
        }
        _outbound.Clear();
        _world.ForgetLinks(Uid);
        _ring?.Dispose();
        foreach (var s in _peerSegments.Values)
        {
            s.Dispose();
        }
        _peerSegments.Clear();
    }
}
