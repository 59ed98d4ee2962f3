using System.Globalization;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// Peak resident memory (VmHWM in /proc/PID/status, Linux): of this process, and sampled from the
/// child processes this process starts (ranks), since a child's figure is gone once it exits; also a
/// process's resident memory now (for the soak) and this process's children by subcommand.
/// </summary>
internal sealed class PeakMemory : IAsyncDisposable
{
    private readonly Dictionary<int, (int Rank, long Peak)> _children = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _sampling;
    private readonly int _expected;
    private readonly string? _except;

    private PeakMemory(int expected, TimeSpan interval, string? except)
    {
        _expected = expected;
        _except = except;
        _sampling = Task.Run(() => SampleAsync(interval));
    }

    /// <summary>
    /// Starts sampling the children of this process until disposed: every <paramref name="interval"/>
    /// (a peak reached in the last interval before a child exits can be missed). Looks for new
    /// children until <paramref name="expected"/> have been seen.
    /// </summary>
    /// <param name="except">Children with this argument on their command line are not sampled (others this process started alongside).</param>
    public static PeakMemory SampleChildren(int expected, TimeSpan interval, string? except = null) => new(expected, interval, except);

    /// <summary>True where /proc has VmHWM (Linux).</summary>
    public static bool Supported => ReadPeak("self") is not null;

    /// <summary>This process's VmHWM, or null.</summary>
    public static long? Self() => ReadPeak("self");

    /// <summary>Resets this process's VmHWM to its current RSS (Linux 4.0+: "5" to clear_refs); false where that is refused.</summary>
    public static bool ResetSelf()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Stops sampling; the highest VmHWM seen of each child by its RANK variable (children without one are left out).</summary>
    public async Task<IReadOnlyDictionary<int, long>> StopAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _sampling.ConfigureAwait(false);
        lock (_children)
        {
            return _children.Values.Where(c => c.Rank >= 0).GroupBy(c => c.Rank).ToDictionary(g => g.Key, g => g.Max(c => c.Peak));
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _stop.Dispose();
    }

    private async Task SampleAsync(TimeSpan interval)
    {
        var self = Environment.ProcessId;
        var ownCommand = CommandLine("self");
        while (!_stop.IsCancellationRequested)
        {
            lock (_children)
            {
                if (_children.Count < _expected)
                {
                    // A child that has not exec'd yet still runs our command in our (vforked) memory: not a rank yet.
                    foreach (var pid in Children(self).Where(p => !_children.ContainsKey(p)))
                    {
                        if (CommandLine(pid.ToString(CultureInfo.InvariantCulture)) is { } command && command != ownCommand
                            && (_except is null || !command.Split('\0').Contains(_except, StringComparer.Ordinal)))
                        {
                            _children[pid] = (RankOf(pid), 0);
                        }
                    }
                }
                foreach (var (pid, (rank, peak)) in _children.ToList())
                {
                    if (ReadPeak(pid.ToString(CultureInfo.InvariantCulture)) is { } now && now > peak)
                    {
                        _children[pid] = (rank, now);
                    }
                }
            }
            try
            {
                await Task.Delay(interval, _stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    /// <summary>
    /// A process's resident memory now, in bytes: VmRSS and its parts (anonymous: heaps; file: mapped code and files;
    /// shared memory: segments, and the runtime's double-mapped JIT code), or null when it is gone (or not Linux).
    /// </summary>
    public static ResidentMemory? Resident(int pid)
    {
        var id = pid.ToString(CultureInfo.InvariantCulture);
        return ReadStatus(id, "VmRSS:") is { } total
            ? new ResidentMemory(total, ReadStatus(id, "RssAnon:") ?? 0, ReadStatus(id, "RssFile:") ?? 0, ReadStatus(id, "RssShmem:") ?? 0)
            : null;
    }

    /// <summary>The children of this process that run <paramref name="subcommand"/> (an argument of their command line), with their RANK variable (-1 without one).</summary>
    public static IReadOnlyList<(int Pid, int Rank)> ChildrenRunning(string subcommand) =>
        [.. Children(Environment.ProcessId)
            .Where(pid => CommandLine(pid.ToString(CultureInfo.InvariantCulture))?.Split('\0').Contains(subcommand, StringComparer.Ordinal) == true)
            .Select(pid => (pid, RankOf(pid)))];

    /// <summary>Processes whose parent is <paramref name="parent"/> (a scan of /proc: the per-task children files are often not built in).</summary>
    private static IEnumerable<int> Children(int parent)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }
            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(dir, "stat"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // Gone meanwhile.
            }
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            var fields = stat[(stat.LastIndexOf(')') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length > 1 && int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out var ppid) && ppid == parent)
            {
                yield return pid;
            }
        }
    }

    private static string? CommandLine(string pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The child's RANK variable (the launcher sets it), or -1.</summary>
    private static int RankOf(int pid)
    {
        try
        {
            foreach (var entry in File.ReadAllText($"/proc/{pid}/environ").Split('\0'))
            {
                if (entry.StartsWith("RANK=", StringComparison.Ordinal)
                    && int.TryParse(entry.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out var rank))
                {
                    return rank;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Exited, or not ours to read.
        }
        return -1;
    }

    private static long? ReadPeak(string pid) => ReadStatus(pid, "VmHWM:");

    /// <summary>A "NAME:   N kB" field of /proc/PID/status, in bytes.</summary>
    private static long? ReadStatus(string pid, string field)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith(field, StringComparison.Ordinal))
                {
                    var kb = line[field.Length..].Trim().Split(' ')[0];
                    return long.TryParse(kb, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n * 1024 : null;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Gone (or not Linux).
        }
        return null;
    }
}
