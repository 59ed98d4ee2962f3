using System.Diagnostics;

namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// The deadline and abort conditions of one blocking collective, checked in every wait loop: the
/// deadline, a broken world (a rank died, the store was lost) and the caller's cancellation.
/// </summary>
internal readonly struct WaitContext(string operation, string group, TimeSpan timeout, World world, CancellationToken ct)
{
    private readonly long _deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);

    public string Operation => operation;

    /// <summary>Time left, at least 1 ms (socket timeouts take whole milliseconds, 0 meaning forever).</summary>
    public int RemainingMs => (int)Math.Clamp((_deadline - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency, 1, int.MaxValue);

    public void Check(int peerWorldRank)
    {
        ct.ThrowIfCancellationRequested();
        if (world.Broken.IsCancellationRequested)
        {
            throw Fail(world.BrokenReason ?? "the world is broken", peerWorldRank);
        }
        if (Stopwatch.GetTimestamp() > _deadline)
        {
            throw Fail($"rank {peerWorldRank} did not keep up within the {timeout.TotalSeconds:F1} s deadline", peerWorldRank);
        }
    }

    public CollectiveException Fail(string problem, int peerWorldRank, Exception? inner = null) =>
        new(operation, group, peerWorldRank >= 0 ? [peerWorldRank] : [], problem, inner);
}
