using System.Globalization;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// <c>bench --method collective</c>: the raw collective under an update's broadcast stage, one buffer from
/// rank 0 to the other ranks, launched as real processes like the update configurations (<see cref="CollectiveRank"/>).
/// Two rows per (ranks, size): all ranks on one host, so receivers copy out of rank 0's shared-memory buffer
/// (compared with single-thread memcpy); and every rank posing as its own host (<see cref="RankConfig.HostIdVariable"/>),
/// so the bytes go down the TCP chain (compared with one loopback TCP connection).
/// </summary>
internal static class CollectiveBench
{
    public const string SharedMemory = "shared memory";
    public const string TcpChain = "TCP chain";

    public static async Task<List<ConfigurationResult>> MeasureAsync(int ranks, long size, int repeat, TextWriter progress, CancellationToken ct) =>
    [
        await MeasureAsync(SharedMemory, ranks, size, repeat, progress, ct).ConfigureAwait(false),
        await MeasureAsync(TcpChain, ranks, size, repeat, progress, ct).ConfigureAwait(false),
    ];

    private static async Task<ConfigurationResult> MeasureAsync(string @case, int ranks, long size, int repeat, TextWriter progress, CancellationToken ct)
    {
        var name = $"{BenchSettings.Collective} ({@case}), {ranks} ranks, {BenchSettings.SizeLabel(size)}";
        var timeout = RankLaunch.Timeout(size, ranks);
        var broadcasts = repeat + 1;
        var host = $"bench-{Environment.ProcessId}";
        var options = new LaunchOptions
        {
            NProc = ranks,
            Command = Launcher.SelfCommand("bench", BenchCommand.CollectiveRankCommand, "--bytes", size.ToString(CultureInfo.InvariantCulture),
                "--broadcasts", broadcasts.ToString(CultureInfo.InvariantCulture), "--timeout", RankLaunch.Seconds(timeout)),
            RankEnvironment = r => new Dictionary<string, string?>
            {
                [RankConfig.HostIdVariable] = @case == TcpChain ? $"{host}-{r.ToString(CultureInfo.InvariantCulture)}" : host,
            },
        };
        progress.WriteLine($"bench: {name}: {ranks} rank processes, {broadcasts} broadcasts each");
        var (slowest, peaks, _) = await RankLaunch.RunAsync(name, BenchSettings.Collective, options, broadcasts, timeout * (broadcasts + 1), ct).ConfigureAwait(false);
        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bench: {name}: {string.Join(", ", slowest.Select(l => l.Seconds.ToString("F3", CultureInfo.InvariantCulture)))} s (the first is the warm-up)"));
        return new ConfigurationResult(BenchSettings.Collective, ranks, size, size, slowest[0], slowest.Skip(1).ToList(), peaks, PeakMemory.Self(), @case);
    }
}
