using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// One rank of <c>bench --method collective</c> (the hidden <c>bench collective-rank</c> command): joins the world,
/// and broadcasts one buffer from rank 0 <c>broadcasts</c> times, each after a barrier. The buffer is a
/// shared-memory segment, as the host backend's device buffers are, so local receivers copy straight out of
/// the root's. Prints <c>result method=collective bytes=N seconds=S update=K</c> per broadcast.
/// </summary>
internal static class CollectiveRank
{
    public static async Task<int> RunAsync(long bytes, int broadcasts, TimeSpan timeout, TextWriter stdout, CancellationToken ct)
    {
        await using var world = await World.JoinAsync(RankConfig.FromEnvironment(), ct).ConfigureAwait(false); // The runner sets the host id.
        var group = world.Group;
        using var buffer = SharedMemorySegment.Create(SharedMemorySegment.NewName("bench"), bytes);
        Baselines.Touch(buffer.Address, bytes); // What is timed is copying, not first-touch faults.
        group.RegisterSharedMemory(buffer);
        try
        {
            for (var k = 0; k < broadcasts; k++)
            {
                var mark = (byte)(k + 1);
                if (world.Rank == 0)
                {
                    Mark(buffer, mark);
                }
                await group.BarrierAsync(timeout, ct).ConfigureAwait(false); // Every broadcast starts with every rank ready.
                var clock = Stopwatch.StartNew();
                await group.BroadcastAsync(buffer.Address, bytes, 0, timeout, ct).ConfigureAwait(false);
                var seconds = clock.Elapsed.TotalSeconds;
                if (!IsMarked(buffer, mark))
                {
                    throw new InvalidOperationException($"rank {world.Rank}: broadcast {k} did not deliver rank 0's bytes");
                }
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"result method={BenchSettings.Collective} bytes={bytes} seconds={seconds:F6} update={k}"));
                stdout.Flush();
            }
            await group.BarrierAsync(timeout, ct).ConfigureAwait(false); // The root's segment outlives every reader.
        }
        finally
        {
            group.UnregisterSharedMemory(buffer);
        }
        return 0;
    }

    /// <summary>Rank 0 stamps the first and last byte of each broadcast, so a receiver can tell it got this one's.</summary>
    private static unsafe void Mark(SharedMemorySegment buffer, byte mark) => buffer.Pointer[0] = buffer.Pointer[buffer.Size - 1] = mark;

    private static unsafe bool IsMarked(SharedMemorySegment buffer, byte mark) => buffer.Pointer[0] == mark && buffer.Pointer[buffer.Size - 1] == mark;
}
