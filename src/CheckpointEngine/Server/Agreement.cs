using System.Buffers.Binary;
using System.Text;
using CheckpointEngine.Runtime.Collectives;

namespace CheckpointEngine.Server;

/// <summary>How the members of an update settle each step: everyone says whether it failed, and all raise the same cause.</summary>
internal static class Agreement
{
    /// <summary>
    /// The members share whether a step succeeded on them; if any failed, every member raises the first
    /// failure's message (so all ranks report the same cause).
    /// </summary>
    public static Task AgreeAsync(ICommunicator group, string? failure, string step, TimeSpan timeout, CancellationToken ct) =>
        AgreeAsync(group, failure, [], step, timeout, ct);

    /// <summary>
    /// As <see cref="AgreeAsync(ICommunicator, string?, string, TimeSpan, CancellationToken)"/>, and in the same round trip every member's
    /// <paramref name="payload"/> (what the next step needs from all of them), indexed by group rank, once no member failed.
    /// </summary>
    public static async Task<byte[][]> AgreeAsync(ICommunicator group, string? failure, byte[] payload, string step, TimeSpan timeout, CancellationToken ct)
    {
        var said = Encoding.UTF8.GetBytes(failure ?? "");
        var mine = new byte[4 + said.Length + payload.Length];
        BinaryPrimitives.WriteInt32LittleEndian(mine, said.Length);
        said.CopyTo(mine, 4);
        payload.CopyTo(mine, 4 + said.Length);
        var waited = System.Diagnostics.Stopwatch.GetTimestamp();
        var all = await group.AllGatherAsync(mine, timeout, ct).ConfigureAwait(false);
        UpdateTelemetry.AgreementWaited(System.Diagnostics.Stopwatch.GetElapsedTime(waited));
        var payloads = new byte[all.Length][];
        for (var r = 0; r < all.Length; r++)
        {
            var length = all[r].Length >= 4 ? BinaryPrimitives.ReadInt32LittleEndian(all[r]) : -1;
            if (length < 0 || length > all[r].Length - 4)
            {
                throw new UpdateFailedException($"rank {group.Members[r]} sent a malformed agreement at {step} ({all[r].Length} bytes)");
            }
            if (length > 0)
            {
                throw new UpdateFailedException($"rank {group.Members[r]} failed at {step}: {Encoding.UTF8.GetString(all[r], 4, length)}");
            }
            payloads[r] = all[r][(4 + length)..];
        }
        return payloads;
    }
}
