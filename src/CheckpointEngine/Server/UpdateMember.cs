using System.Text.Json;
using System.Text.Json.Serialization;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Server;

/// <summary>
/// What every member of an update tells the others: its worker's socket and session key (the first
/// rank of an inference group hands the engine its whole group's tickets), the network device its P2P reads go through, and its host
/// (members of one host share memory; shard-aware updates relay parts between hosts). <see cref="Segments"/>: the shared-memory
/// segments of its registered buffers of the checkpoint, in buffer order (host backend; null when it has none or some buffer is not one);
/// <see cref="DeviceSegment"/>: its device buffer's segment (host backend).
/// </summary>
internal sealed record UpdateMember(int Rank, string DeviceId, string WorkerAddress, string Session, string NetDevice, string HostId, IReadOnlyList<SegmentRef>? Segments = null,
    SegmentRef? DeviceSegment = null)
{
    public static UpdateMember For(int rank, string deviceId, WorkerTicket ticket, string netDevice, string hostId, IReadOnlyList<SegmentRef>? segments, SegmentRef? deviceSegment) =>
        new(rank, deviceId, ticket.Address, ticket.Session, netDevice, hostId, segments, deviceSegment);

    public WorkerSocket Socket => new(Rank, DeviceId, new WorkerTicket(WorkerAddress, Session));

    public byte[] ToBytes() => JsonSerializer.SerializeToUtf8Bytes(this, UpdateMemberJson.Default.UpdateMember);

    /// <summary>A member's announcement, checked: it must come from <paramref name="rank"/> and name everything.</summary>
    public static UpdateMember Parse(byte[] bytes, int rank)
    {
        UpdateMember? member;
        try
        {
            member = JsonSerializer.Deserialize(bytes, UpdateMemberJson.Default.UpdateMember);
        }
        catch (JsonException e)
        {
            throw new UpdateFailedException($"rank {rank} sent a malformed worker announcement: {e.Message}", e);
        }
        return member is { DeviceId.Length: > 0, WorkerAddress.Length: > 0, Session.Length: WorkerTicket.SessionLength, NetDevice.Length: > 0, HostId.Length: > 0 } && member.Rank == rank
            ? member
            : throw new UpdateFailedException($"rank {rank} sent an incomplete worker announcement (rank {member?.Rank}, device '{member?.DeviceId}', socket '{member?.WorkerAddress}', net device '{member?.NetDevice}', host '{member?.HostId}')");
    }
}

/// <summary>The announcement's JSON contract, generated at compile time (no reflection in a process's first update).</summary>
[JsonSerializable(typeof(UpdateMember))]
internal sealed partial class UpdateMemberJson : JsonSerializerContext;
