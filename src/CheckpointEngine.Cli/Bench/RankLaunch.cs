using System.Globalization;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.Server;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// One launch of a bench configuration's rank processes through <see cref="Launcher"/> (as <c>demo</c> and
/// <c>launch</c> start ranks), with their peak memory sampled, read back from the result lines they print.
/// </summary>
internal static class RankLaunch
{
    /// <summary>
    /// Runs the ranks of <paramref name="options"/>, each printing one result line of <paramref name="method"/> per
    /// update (<c>update=K</c>), and returns per update the slowest rank's line (the update is over when its last
    /// rank is) with each stage's largest sum over the ranks (in P2P the slowest rank may have staged nothing),
    /// and the peak memory of each rank, and the slowest rank's prepare line (<c>prepare=1</c>) when the ranks prepared first. Throws naming <paramref name="name"/> with the launch's last lines when
    /// a rank fails, a rank misses an update, or the launch outlives <paramref name="limit"/>.
    /// </summary>
    /// <param name="notSampled">Child processes with this argument (others this process runs alongside) are left out of the peaks.</param>
    public static async Task<(IReadOnlyList<ResultLine> Slowest, IReadOnlyDictionary<int, long> Peaks, ResultLine? Prepared)> RunAsync(string name, string method, LaunchOptions options,
        int updates, TimeSpan limit, CancellationToken ct, string? notSampled = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var output = new StringWriter();
        var errors = new StringWriter();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(limit);
        var sampler = PeakMemory.Supported ? PeakMemory.SampleChildren(options.NProc, BenchRunner.SampleInterval, notSampled) : null;
        int exit;
        IReadOnlyDictionary<int, long> peaks = new Dictionary<int, long>();
        try
        {
            exit = await Launcher.RunAsync(options, output, errors, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw Failed(name, $"did not finish within {limit.TotalSeconds:F0} s", output, errors);
        }
        finally
        {
            if (sampler is not null)
            {
                peaks = await sampler.StopAsync().ConfigureAwait(false);
                await sampler.DisposeAsync().ConfigureAwait(false);
            }
        }
        var lines = ResultLine.ParseAll(output.ToString()).Where(l => l.Method == method).ToList();
        var prepared = lines.Where(l => l.Prepare).MaxBy(l => l.Seconds);
        var slowest = lines.Where(l => !l.Prepare)
            .GroupBy(l => l.Update).Where(g => g.Count() == options.NProc).OrderBy(g => g.Key)
            .Select(g => g.MaxBy(l => l.Seconds)! with { Stage = g.Max(l => l.Stage), Broadcast = g.Max(l => l.Broadcast), Reload = g.Max(l => l.Reload), Network = g.Max(l => l.Network) })
            .ToList();
        if (exit != 0 || slowest.Count != updates)
        {
            throw Failed(name, exit != 0 ? $"failed (exit {exit})" : $"reported {slowest.Count} of {updates} updates from every rank", output, errors);
        }
        return (slowest, peaks, prepared);
    }

    /// <summary>Generous: a slow machine must not fail the benchmark, a hung rank must not hang it.</summary>
    public static TimeSpan Timeout(long bytes, int ranks) => TimeSpan.FromSeconds(60 + 60 * (double)bytes * ranks / (1L << 30));

    public static string Seconds(TimeSpan timeout) => timeout.TotalSeconds.ToString("F0", CultureInfo.InvariantCulture);

    private static UpdateFailedException Failed(string name, string what, StringWriter output, StringWriter errors)
    {
        var tail = (errors.ToString() + output.ToString()).Split('\n', StringSplitOptions.RemoveEmptyEntries).TakeLast(20);
        return new UpdateFailedException($"bench {name}: the launch {what}; its last lines:\n  {string.Join("\n  ", tail)}");
    }
}
