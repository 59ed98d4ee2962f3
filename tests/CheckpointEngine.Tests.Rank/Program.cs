// One rank of a multi-process test. The rank reads RANK/WORLD_SIZE/MASTER_* from the environment,
// runs the scenario named by the first argument, prints "key value" lines on stdout, and exits
// 0 on success, 3 when a collective failed (the message goes to stdout as "error ...").
using System.Diagnostics;
using System.Security.Cryptography;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Collectives;

var scenario = args.Length > 0 ? args[0] : "";
if (scenario == "cli")
{
    // The reference worker and other commands, without needing the CLI project's build.
    return CheckpointEngine.Cli.Commands.CkptEngineCli.Run(args[1..], Console.Out, Console.Error);
}
var timeout = TimeSpan.FromSeconds(double.Parse(Environment.GetEnvironmentVariable("TEST_TIMEOUT_S") ?? "30", System.Globalization.CultureInfo.InvariantCulture));
var config = RankConfig.FromEnvironment();
var clock = Stopwatch.StartNew();
World? world = null;
try
{
    world = await World.JoinAsync(config);
    Console.WriteLine($"joined {world.Rank} {world.Size}");
    await (scenario switch
    {
        "collectives" => Scenarios.Collectives(world, timeout),
        "subgroups" => Scenarios.SubGroups(world, timeout),
        "die" => Scenarios.Die(world, timeout, int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture), args[2]),
        "bench" => Scenarios.Bench(world, timeout, long.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture)),
        "update" => UpdateScenario.Run(world, timeout, args[1..]),
        "p2p-owner" => P2PScenario.Owner(world, timeout, args[1..]),
        "p2p-join" => P2PScenario.Join(world, timeout, args[1..]),
        "nccl" => NcclScenario.Run(world, timeout, args[1]),
        "nccl-order" => NcclScenario.Order(world, timeout),
        "join" => Task.CompletedTask,
        _ => throw new ArgumentException($"unknown scenario '{scenario}'"),
    });
    Console.WriteLine("done");
    await world.DisposeAsync();
    return 0;
}
catch (Exception e) when (e is CollectiveException or CheckpointEngine.Runtime.Rendezvous.RendezvousException or CheckpointEngine.Server.UpdateFailedException)
{
    Console.WriteLine($"error {clock.Elapsed.TotalSeconds:F2} {e.GetType().Name}: {e.Message}");
    Console.Out.Flush();
    if (world is not null)
    {
        await world.DisposeAsync(); // As the product does: rank 0 keeps the store up until the others have their answer too.
    }
    return 3;
}

internal static class Scenarios
{
    public static async Task Collectives(World world, TimeSpan timeout)
    {
        var g = world.Group;
        var blobs = await g.AllGatherAsync(Enumerable.Repeat((byte)(g.Rank + 1), g.Rank + 1).ToArray(), timeout);
        Check(blobs.Select((b, r) => b.Length == r + 1 && b.All(x => x == r + 1)).All(x => x), "all-gather contents");
        Console.WriteLine($"allgather {Convert.ToHexString(SHA256.HashData(blobs.SelectMany(b => b).ToArray()))}");
        var v = new long[] { g.Rank, -g.Rank, 1 };
        var sum = await g.AllReduceAsync(v, ReduceOp.Sum, timeout);
        var min = await g.AllReduceAsync(v, ReduceOp.Min, timeout);
        var max = await g.AllReduceAsync(v, ReduceOp.Max, timeout);
        long n = g.Size;
        Check(sum.SequenceEqual([n * (n - 1) / 2, -n * (n - 1) / 2, n]) && min.SequenceEqual([0, -(n - 1), 1]) && max.SequenceEqual([n - 1, 0, 1]), "all-reduce");
        await g.BarrierAsync(timeout);
        foreach (var size in new long[] { 1, 4096 + 3, (4 << 20) + 77, 24 << 20 })
        {
            for (var root = 0; root < g.Size; root++)
            {
                await BroadcastAndVerify(g, size, root, timeout);
                await BroadcastAndVerify(g, size, root, timeout, shared: true);
                await BroadcastAndVerify(g, size, root, timeout, part: true);
                await BroadcastAndVerify(g, size, root, timeout, shared: true, part: true);
            }
        }
        Console.WriteLine("broadcast ok");
    }

    public static async Task SubGroups(World world, TimeSpan timeout)
    {
        var g = world.Group;
        var mine = Enumerable.Range(0, g.Size).Where(r => r % 2 == g.Rank % 2).ToArray();
        for (var round = 0; round < 3; round++)
        {
            using var sub = await g.CreateSubGroupAsync("parity", mine, timeout);
            var blobs = await sub.AllGatherAsync([(byte)world.Rank, (byte)round], timeout);
            Check(blobs.Select(b => (int)b[0]).SequenceEqual(sub.Members) && blobs.All(b => b[1] == round), $"sub-group all-gather round {round}");
            await BroadcastAndVerify(sub, (5 << 20) + round, sub.Size - 1, timeout);
        }
        // The world group still works after sub-groups came and went.
        await BroadcastAndVerify(g, 1 << 20, 0, timeout);
        Console.WriteLine($"subgroups ok {string.Join(',', mine)}");
    }

    /// <summary>Rank <paramref name="victim"/> leaves abruptly (or hangs) before the step; the others must fail fast, naming it.</summary>
    public static async Task Die(World world, TimeSpan timeout, int victim, string how)
    {
        var g = world.Group;
        var clock = Stopwatch.StartNew();
        try
        {
            // The victim may leave as soon as it passed the barrier, so the others can fail in it too.
            await g.BarrierAsync(timeout);
            if (world.Rank == victim)
            {
                if (how == "hang")
                {
                    await Task.Delay(Timeout.Infinite);
                }
                Environment.Exit(137); // No goodbye to the store: like a crash.
            }
            if (how == "broadcast")
            {
                await BroadcastAndVerify(g, 256 << 20, victim == 0 ? 1 : 0, timeout);
            }
            else
            {
                await g.AllGatherAsync([1], timeout);
            }
        }
        finally
        {
            Console.WriteLine($"failed-after {clock.Elapsed.TotalSeconds:F2}");
        }
    }

    public static async Task Bench(World world, TimeSpan timeout, long bytes)
    {
        var g = world.Group;
        using var buffer = NativeBuffer.Allocate(bytes);
        Fill(buffer.Address, bytes, 7);
        await g.BroadcastAsync(buffer.Address, bytes, 0, timeout); // Warm up: fault in pages and links.
        var best = double.MaxValue;
        for (var i = 0; i < 3; i++)
        {
            await g.BarrierAsync(timeout);
            var sw = Stopwatch.StartNew();
            await g.BroadcastAsync(buffer.Address, bytes, 0, timeout);
            await g.BarrierAsync(timeout);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        Console.WriteLine($"bench {bytes} {best:F4}");
    }

    /// <summary>
    /// Broadcasts deterministic bytes from <paramref name="root"/> and checks them on every rank; with
    /// <paramref name="shared"/> the buffers live in registered shared segments (readers copy directly).
    /// </summary>
    /// <param name="part">Each rank keeps only its own runs (every (rank + 2)-th piece of 1,000 bytes, from an offset of its rank), packed in place.</param>
    private static async Task BroadcastAndVerify(ICommunicator g, long size, int root, TimeSpan timeout, bool shared = false, bool part = false)
    {
        using var segment = shared ? SharedMemorySegment.Create(SharedMemorySegment.NewName("test"), size + 4096) : null;
        using var native = shared ? null : NativeBuffer.Allocate(size);
        var address = segment is not null ? segment.Address + 4096 : native!.Address; // Not at the segment's start: offsets must work.
        if (segment is not null)
        {
            g.RegisterSharedMemory(segment);
        }
        var seed = (ulong)(size * 31 + root);
        if (g.Rank == root)
        {
            Fill(address, size, seed);
        }
        var runs = new List<ByteRun>();
        for (long at = Math.Min(g.Rank, size - 1), packed = 0; at < size; at += 1000L * (g.Rank + 2))
        {
            var n = Math.Min(1000 - g.Rank, size - at);
            runs.Add(new ByteRun(at, packed, n));
            packed += n;
        }
        await (part ? g.BroadcastPartAsync(address, size, root, runs, address, timeout) : g.BroadcastAsync(address, size, root, timeout));
        if (segment is not null)
        {
            g.UnregisterSharedMemory(segment);
        }
        using var expected = NativeBuffer.Allocate(size);
        Fill(expected.Address, size, seed);
        if (part)
        {
            using var packedExpected = NativeBuffer.Allocate(size);
            ByteRun.CopyAll(runs, expected.Address, packedExpected.Address);
            Check(Equal(address, packedExpected.Address, runs.Sum(r => r.Length)), $"part broadcast of {size} bytes from {root}{(shared ? " (shared)" : "")}");
            return;
        }
        Check(Equal(address, expected.Address, size), $"broadcast of {size} bytes from {root}{(shared ? " (shared)" : "")}");
    }

    private static unsafe bool Equal(nint a, nint b, long n) =>
        new ReadOnlySpan<byte>((byte*)a, (int)n).SequenceEqual(new ReadOnlySpan<byte>((byte*)b, (int)n));

    private static unsafe void Fill(nint address, long n, ulong seed)
    {
        var p = (byte*)address;
        var s = seed * 0x9E3779B97F4A7C15UL | 1;
        long i = 0;
        for (; i + 8 <= n; i += 8)
        {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *(ulong*)(p + i) = s;
        }
        for (; i < n; i++)
        {
            p[i] = (byte)(i * 131);
        }
    }

    private static void Check(bool ok, string what)
    {
        if (!ok)
        {
            throw new InvalidOperationException($"check failed: {what}");
        }
    }
}
