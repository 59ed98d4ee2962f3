using CheckpointEngine.Runtime;
using CheckpointEngine.Hosting;
using System.CommandLine;
using System.Globalization;
using CheckpointEngine.Cli.Bench;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine bench</c>: end-to-end updates, registrations and raw collective broadcasts for every
/// ranks × size × method, against baselines measured in the same run; a table, one JSON document, or a
/// markdown report (see <see cref="BenchRunner"/>).
/// </summary>
internal static class BenchCommand
{
    /// <summary>The hidden subcommand each rank process runs (see <see cref="BenchRank"/>).</summary>
    public const string RankCommand = "rank";

    /// <summary>The hidden subcommand each rank of <c>--method collective</c> runs (see <see cref="CollectiveRank"/>).</summary>
    public const string CollectiveRankCommand = "collective-rank";

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var ranks = new Option<string>("--ranks") { Description = "rank counts, comma-separated (each with a reference worker of as many shards)", DefaultValueFactory = _ => "1,2" };
        var size = new Option<string>("--size") { Description = "checkpoint sizes, comma-separated, e.g. 256MiB,2GiB", DefaultValueFactory = _ => "256MiB,1GiB" };
        var method = new Option<string>("--method") { Description = "what to measure, comma-separated: broadcast, p2p (whole updates), registration (into host memory), collective (a raw broadcast between rank processes), quantize (BF16 to block-scaled FP8 in this process)", DefaultValueFactory = _ => "broadcast,p2p" };
        var bucket = new Option<string?>("--bucket-size") { Description = $"largest bucket, e.g. 256MiB (default: as update sizes it; {RankConfig.MaxBucketSizeVariable} applies)" };
        var repeat = new Option<int>("--repeat") { Description = "measured updates (registrations, broadcasts) per configuration, after one warm-up in the same processes", DefaultValueFactory = _ => 3 };
        var json = new Option<bool>("--json") { Description = "print one JSON document instead of the table" };
        var output = new Option<string?>("--out") { Description = "also write a markdown report (machine, date, tables) to this file" };
        var noPrepare = new Option<bool>("--no-prepare") { Description = "do not prepare the workers before the first update (what a serving rank does ahead of it): the first update maps what it reads itself, as a one-shot update runs it" };
        var separateHosts = new Option<bool>("--separate-hosts") { Description = "each rank of an update poses as its own host: buckets cross loopback TCP as between hosts (shard-aware ones by class relays), and workers cannot read the owners' memory in place" };
        var trace = new Option<string?>("--trace") { Description = "write each configuration's last update as a Chrome/Perfetto trace into this directory (trace-METHOD-Nr-SIZE.json)" };
        trace.Validators.Add(r => { if (r.GetValueOrDefault<string?>() is { } d && !Directory.Exists(d)) r.AddError($"--trace {d}: directory does not exist"); });
        ranks.Validators.Add(r => { if (!BenchSettings.TryParseRanks(r.GetValueOrDefault<string>() ?? "", out _, out var e)) r.AddError(e); });
        size.Validators.Add(r => { if (!BenchSettings.TryParseSizes(r.GetValueOrDefault<string>() ?? "", out _, out var e)) r.AddError(e); });
        method.Validators.Add(r => { if (!BenchSettings.TryParseMethods(r.GetValueOrDefault<string>() ?? "", out _, out var e)) r.AddError(e); });
        bucket.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<string?>() is { } text && (!ByteSize.TryParse(text, out var b) || b < BenchSettings.MinSize))
            {
                r.AddError($"--bucket-size: '{text}' is not a size of at least 1MiB (e.g. 256MiB)");
            }
        });
        output.Validators.Add(r =>
        {
            // Checked now, not after a minute of measuring.
            if (r.GetValueOrDefault<string?>() is { } file && Path.GetDirectoryName(Path.GetFullPath(file)) is { } dir && !Directory.Exists(dir))
            {
                r.AddError($"--out {file}: directory {dir} does not exist");
            }
        });
        var device = DeviceOption.Create();
        var model = ModelOption.Create();
        var transports = new Option<string?>("--p2p-transport")
        {
            Description = "measure p2p over each of these transports, comma-separated: tcp, ucx, auto (rows p2p-tcp, p2p-ucx; default: the ranks' own choice)",
        };
        repeat.Validators.Add(r => { if (r.GetValueOrDefault<int>() is < 1 or > BenchSettings.MaxRepeat) r.AddError($"--repeat must be in [1, {BenchSettings.MaxRepeat}]"); });
        var command = new Command("bench", "Benchmark updates, registration and collectives on this machine against memcpy, shared-memory and TCP baselines measured in the same run.")
        {
            ranks, size, method, bucket, repeat, json, output, trace, noPrepare, separateHosts, device, model, transports, Rank(stdout), CollectiveRank(stdout), ShmReader(stdout), CudaCopy(stdout),
        };
        command.Validators.Add(r =>
        {
            if (BenchSettings.TryParseRanks(r.GetValue(ranks) ?? "", out var rs, out _) && BenchSettings.TryParseMethods(r.GetValue(method) ?? "", out var ms, out _)
                && !BenchSettings.TryCheck(rs, ms, out var error))
            {
                r.AddError(error);
            }
            if (!BenchSettings.TryExpandTransports([], r.GetValue(transports), out _, out var bad))
            {
                r.AddError(bad);
            }
        });
        command.SetAction(async (result, ct) =>
        {
            _ = BenchSettings.TryParseRanks(result.GetValue(ranks)!, out var r, out _);
            _ = BenchSettings.TryParseSizes(result.GetValue(size)!, out var s, out _);
            _ = BenchSettings.TryParseMethods(result.GetValue(method)!, out var listed, out _);
            _ = BenchSettings.TryExpandTransports(listed, result.GetValue(transports), out var m, out _);
            long? b = result.GetValue(bucket) is { } text && ByteSize.TryParse(text, out var n) ? n : null;
            var report = await BenchRunner.RunAsync(new BenchSettings(r, s, m, b, result.GetValue(repeat), result.GetValue(trace), DeviceOption.Choose(result.GetValue(device)), result.GetValue(model)) { Prepare = !result.GetValue(noPrepare), SeparateHosts = result.GetValue(separateHosts) }, stderr, ct).ConfigureAwait(false);
            if (result.GetValue(json))
            {
                stdout.WriteLine(report.ToJson());
            }
            else
            {
                report.WriteText(stdout);
            }
            if (result.GetValue(output) is { } path)
            {
                await File.WriteAllTextAsync(path, report.ToMarkdown(), ct).ConfigureAwait(false);
                stderr.WriteLine($"bench: wrote {path}");
            }
            return 0;
        });
        return command;
    }

    /// <summary>One rank of a configuration (hidden; the runner launches it): like <c>update</c>, but several updates in one process.</summary>
    private static Command Rank(TextWriter stdout)
    {
        var path = new Option<string>("--checkpoint-path") { Required = true };
        var endpoint = new Option<string>("--endpoint") { Required = true };
        var groupSize = new Option<int>("--inference-parallel-size") { DefaultValueFactory = _ => 1 };
        var method = new Option<string>("--update-method") { DefaultValueFactory = _ => "broadcast" };
        method.AcceptOnlyFromAmong(BenchSettings.UpdateMethods);
        var updates = new Option<int>("--updates") { DefaultValueFactory = _ => 1 };
        var timeout = new Option<double>("--timeout") { DefaultValueFactory = _ => 300 };
        var trace = new Option<string?>("--trace");
        var role = new Option<string?>("--role");
        role.AcceptOnlyFromAmong(BenchRank.OwnerRole, BenchRank.JoinerRole);
        var metasFile = new Option<string?>("--metas-file");
        var stopFile = new Option<string?>("--stop-file");
        var prepare = new Option<bool>("--prepare");
        updates.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--updates must be at least 1"); });
        timeout.Validators.Add(r => { if (!(r.GetValueOrDefault<double>() > 0)) r.AddError("--timeout must be a positive number of seconds"); });
        var command = new Command(RankCommand) { Hidden = true };
        foreach (var o in new Option[] { path, endpoint, groupSize, method, updates, timeout, trace, role, metasFile, stopFile, prepare })
        {
            command.Options.Add(o);
        }
        command.Validators.Add(r =>
        {
            if (r.GetValue(role) is { } given && (r.GetValue(metasFile) is null || given == BenchRank.OwnerRole && r.GetValue(stopFile) is null))
            {
                r.AddError("--role needs --metas-file (and an owner --stop-file)");
            }
        });
        command.SetAction((result, ct) => BenchRank.RunAsync(result.GetValue(path)!, result.GetValue(endpoint)!, result.GetValue(groupSize),
            result.GetValue(method)!, result.GetValue(updates), TimeSpan.FromSeconds(result.GetValue(timeout)), result.GetValue(trace), stdout, ct,
            result.GetValue(role), result.GetValue(metasFile), result.GetValue(stopFile), result.GetValue(prepare)));
        return command;
    }

    /// <summary>One rank of <c>--method collective</c> (hidden; the runner launches it): BROADCASTS timed broadcasts of BYTES from rank 0.</summary>
    private static Command CollectiveRank(TextWriter stdout)
    {
        var bytes = new Option<long>("--bytes") { Required = true };
        var broadcasts = new Option<int>("--broadcasts") { DefaultValueFactory = _ => 1 };
        var timeout = new Option<double>("--timeout") { DefaultValueFactory = _ => 300 };
        bytes.Validators.Add(r => { if (r.GetValueOrDefault<long>() < 1) r.AddError("--bytes must be at least 1"); });
        broadcasts.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--broadcasts must be at least 1"); });
        timeout.Validators.Add(r => { if (!(r.GetValueOrDefault<double>() > 0)) r.AddError("--timeout must be a positive number of seconds"); });
        var command = new Command(CollectiveRankCommand) { Hidden = true };
        foreach (var o in new Option[] { bytes, broadcasts, timeout })
        {
            command.Options.Add(o);
        }
        command.SetAction((result, ct) => Bench.CollectiveRank.RunAsync(result.GetValue(bytes), result.GetValue(broadcasts), TimeSpan.FromSeconds(result.GetValue(timeout)), stdout, ct));
        return command;
    }

    /// <summary>
    /// The GPU baseline (hidden; the GPU check runs it): seconds for one plain <c>cuMemcpyHtoD</c> of BYTES from
    /// page-locked host memory to device 0, best of three, printed as "seconds=S gbps=G".
    /// </summary>
    private static Command CudaCopy(TextWriter stdout)
    {
        var bytes = new Argument<string>("bytes") { Description = "size, e.g. 4GiB" };
        var command = new Command("cuda-h2d-baseline") { Hidden = true };
        command.Arguments.Add(bytes);
        command.SetAction(result =>
        {
            if (!ByteSize.TryParse(result.GetValue(bytes)!, out var n) || n < 1)
            {
                throw new CheckpointEngineException($"'{result.GetValue(bytes)}' is not a size (e.g. 4GiB)");
            }
            var seconds = Baselines.PinnedHostToDevice(n);
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"seconds={seconds:R} gbps={n / seconds / 1e9:F3}"));
            return 0;
        });
        return command;
    }

    /// <summary>The other process of the shared-memory baseline (hidden): copies a segment out and prints the seconds.</summary>
    private static Command ShmReader(TextWriter stdout)
    {
        var segment = new Argument<string>("segment");
        var bytes = new Argument<long>("bytes");
        var command = new Command(Baselines.BenchShmReader) { Hidden = true };
        command.Arguments.Add(segment);
        command.Arguments.Add(bytes);
        command.SetAction(result =>
        {
            var seconds = Baselines.CopyOutOfSharedMemory(result.GetValue(segment)!, result.GetValue(bytes));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"seconds={seconds:R}"));
            return 0;
        });
        return command;
    }
}
