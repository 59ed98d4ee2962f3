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
    public static async Task AgreeAsync(ICommunicator group, string? failure, string step, TimeSpan timeout, CancellationToken ct)
    {
        var waited = System.Diagnostics.Stopwatch.GetTimestamp();
        var all = await group.AllGatherAsync(Encoding.UTF8.GetBytes(failure ?? ""), timeout, ct).ConfigureAwait(false);
        UpdateTelemetry.AgreementWaited(System.Diagnostics.Stopwatch.GetElapsedTime(waited));
        for (var r = 0; r < all.Length; r++)
        {
            if (all[r].Length > 0)
            {
                throw new UpdateFailedException($"rank {group.Members[r]} failed at {step}: {Encoding.UTF8.GetString(all[r])}");
            }
        }
    }
}
