using CheckpointEngine.Worker;
using CheckpointEngine.Hosting;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Cli.Progress;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.ReferenceEngine;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine demo</c>: the whole system on one machine. Writes a deterministic synthetic
/// checkpoint, starts the reference inference worker and N parameter-server ranks (real processes,
/// through the launcher), runs the update(s), checks every worker's bytes against the source, and
/// prints what happened. Exit code 0 only if every update succeeded and every worker verified. With
/// <c>--trace</c> the ranks' update commands write the trace (see <see cref="UpdateCommand"/>).
/// </summary>
internal static class DemoCommand
{
    private static readonly string[] VerifyFlag = ["--verify"];

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var ranks = new Option<int>("--ranks") { Description = "parameter-server ranks (one worker shard each)", DefaultValueFactory = _ => 2 };
        var size = new Option<string>("--size") { Description = "checkpoint size, e.g. 64MiB or 1GiB", DefaultValueFactory = _ => "64MiB" };
        var method = new Option<string>("--method") { Description = "broadcast, p2p, or all", DefaultValueFactory = _ => "all" };
        method.AcceptOnlyFromAmong("broadcast", "p2p", "all");
        var json = new Option<bool>("--json") { Description = "print one JSON object per method instead of a summary" };
        var trace = new Option<string?>("--trace") { Description = "write the update's per-bucket stage times as Chrome/Perfetto trace JSON (with --method all: FILE.broadcast.json and FILE.p2p.json)" };
        trace.Validators.Add(UpdateCommand.ValidateTracePath);
        var device = DeviceOption.Create();
        var transport = P2PTransportOption.Create();
        var model = ModelOption.Create();
        var verify = new Option<bool>("--verify") { Description = "the ranks send each tensor's CRC-32 and the worker checks what it received (see update --verify)" };
        var verbose = new Option<bool>("--verbose") { Description = "on a console: show every rank's log lines above the live progress view" };
        var shardByTp = new Option<bool>("--shard-by-tp")
        {
            Description = "the worker's shards keep only their tensor-parallel slices and declare them from the second update: each rank sends only its shard's bytes",
        };
        ranks.Validators.Add(r => { if (r.GetValueOrDefault<int>() is < 1 or > 64) r.AddError("--ranks must be between 1 and 64"); });
        size.Validators.Add(r =>
        {
            if (!ByteSize.TryParse(r.GetValueOrDefault<string>() ?? "", out var bytes) || bytes < (1L << 20))
            {
                r.AddError($"--size '{r.GetValueOrDefault<string>()}' is not a size of at least 1MiB (e.g. 64MiB, 1GiB)");
            }
        });
        var command = new Command("demo", "Run the whole system on this machine: synthetic checkpoint, reference worker, N ranks, update, verify.")
        {
            ranks, size, method, json, trace, device, model, verify, shardByTp, transport, verbose,
        };
        command.SetAction(async (result, ct) =>
        {
            _ = ByteSize.TryParse(result.GetValue(size)!, out var bytes);
            var tracePath = result.GetValue(trace) is { } t ? Path.GetFullPath(t) : null;
            return await RunAsync(result.GetValue(ranks), bytes, result.GetValue(model), result.GetValue(method)!, result.GetValue(json), tracePath, DeviceOption.Choose(result.GetValue(device)), result.GetValue(verify), result.GetValue(shardByTp), result.GetValue(transport), result.GetValue(verbose), stdout, stderr, ct).ConfigureAwait(false);
        });
        return command;
    }

    private static async Task<int> RunAsync(int ranks, long bytes, string? model, string method, bool json, string? trace, DeviceKind kind, bool verify, bool shardByTp, string? transport, bool verbose, TextWriter stdout,
        TextWriter stderr, CancellationToken ct)
    {
        var root = Directory.CreateTempSubdirectory("ckpt-engine-demo-").FullName;
        var log = json ? TextWriter.Null : stdout;
        try
        {
            var clock = Stopwatch.StartNew();
            var dir = Path.Combine(root, "checkpoint");
            var layers = Math.Max(ranks, 4);
            ModelOption.Write(model, dir, bytes, shards: Math.Min(ranks * 2, layers), layers: layers);
            var source = SourceDigests(dir, out var total, out var crcs);
            log.WriteLine($"wrote a {ByteSize.Format(total)} checkpoint{(model is null ? "" : $" shaped like {model}")} ({source.Count} tensors) in {clock.Elapsed.TotalSeconds:F1} s");

            var ids = DeviceOption.WorkerIds(kind, ranks, "demo");
            await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions { TensorParallel = ranks, DeviceIds = ids, ShardByTp = shardByTp }, cancellationToken: ct).ConfigureAwait(false);
            log.WriteLine($"reference worker with {ranks} shards{(shardByTp ? " keeping their tensor-parallel slices (declared from the second update)" : "")} at {worker.Address}; starting {ranks} ranks ({method})");

            var output = new StringWriter();
            var errors = new StringWriter();
            var options = new LaunchOptions
            {
                NProc = ranks,
                Command = Launcher.SelfCommand(["update", "--checkpoint-path", dir, "--endpoint", worker.Address.ToString(),
                    "--inference-parallel-size", ranks.ToString(CultureInfo.InvariantCulture), "--update-method", method, "--timeout", "120", "--repeat", "2",
                    .. trace is null ? [] : new[] { "--trace", trace }, .. verify ? VerifyFlag : [], .. transport is null ? [] : new[] { "--p2p-transport", transport }]),
                Environment = new Dictionary<string, string?>([DeviceOption.RankVariable(kind), .. json ? [] : new[] { LaunchView.RankVariable }]),
                RankEnvironment = r => new Dictionary<string, string?> { [RankConfig.DeviceIdVariable] = ids[r] },
            };
            int exit;
            // One view of the ranks' progress (and a summary table) unless the output is JSON.
            await using (var view = json ? null : new LaunchView(ranks, stdout, stderr, LaunchView.IsInteractive(stdout), verbose, capture: output))
            {
                exit = await Launcher.RunAsync(options, view?.Out ?? output, view?.Err ?? errors, ct).ConfigureAwait(false);
            }
            var results = Results(output.ToString());
            var verified = exit == 0 && await VerifyAsync(worker.Address, source, shardByTp ? crcs : null, ranks, ct).ConfigureAwait(false);
            foreach (var (m, r, first) in results)
            {
                var gbps = r.Bytes / Math.Max(r.Seconds, 1e-9) / 1e9;
                if (json)
                {
                    stdout.WriteLine(JsonSerializer.Serialize(new
                    {
                        method = m, transport = r.Transport, ranks, bytes = r.Bytes, seconds = Math.Round(r.Seconds, 6), gbps = Math.Round(gbps, 3),
                        efficiency = Math.Round(r.Efficiency, 3), first_seconds = Math.Round(first, 6), verified,
                        stage_seconds = Math.Round(r.Stage, 6), broadcast_seconds = Math.Round(r.Broadcast, 6), reload_seconds = Math.Round(r.Reload, 6),
                    }));
                }
                else
                {
                    stdout.WriteLine($"{(r.Transport is { } t ? $"{m} ({t})" : m),-9}: {ByteSize.Format(r.Bytes)} to each of {ranks} workers in {r.Seconds:F3} s ({gbps:F2} GB/s per worker; the first, cold update took {first:F3} s); " +
                        $"stage sums: stage {r.Stage:F3} s, broadcast {r.Broadcast:F3} s, reload {r.Reload:F3} s; pipeline efficiency {r.Efficiency:F2}");
                }
            }
            if (!json)
            {
                stdout.WriteLine(verified
                    ? shardByTp
                        ? $"verified: every worker holds its slices and every tensor it keeps whole bit-exact, and the slices put together are the checkpoint's ({clock.Elapsed.TotalSeconds:F1} s in all)"
                        : $"verified: every worker holds all {source.Count} tensors bit-exact ({clock.Elapsed.TotalSeconds:F1} s in all)"
                    : $"NOT verified: {(exit != 0 ? $"a rank failed (exit {exit})" : "a worker's bytes differ from the checkpoint")}");
            }
            if (json && results.Count == 0)
            {
                stdout.WriteLine(JsonSerializer.Serialize(new { method, ranks, bytes = 0, seconds = 0.0, gbps = 0.0, verified = false }));
                stderr.Write(errors.ToString());
            }
            return verified && results.Count > 0 ? 0 : 1;
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>The slowest rank's figures per method, in order, from the "result ..." lines the update command prints.</summary>
    /// <remarks>Each method runs twice in the same rank processes: the second update is the steady state (reported), the first pays for first touches (its time is shown apart).</remarks>
    private static List<(string Method, Bench.ResultLine Result, double FirstSeconds)> Results(string output) =>
        Bench.ResultLine.ParseAll(output)
            .GroupBy(r => r.Method, StringComparer.Ordinal)
            .Select(g =>
            {
                var last = g.Max(r => r.Update);
                return (g.Key, g.Where(r => r.Update == last).MaxBy(r => r.Seconds)!, g.Where(r => r.Update == 0).Max(r => r.Seconds));
            })
            .ToList();

    private static Dictionary<string, string> SourceDigests(string dir, out long total, out Dictionary<string, string> crcs)
    {
        using var checkpoint = Checkpoint.Open(dir);
        total = checkpoint.TotalBytes;
        crcs = checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => System.IO.Hashing.Crc32.HashToUInt32(e.File.View(e.Tensor).Span).ToString("x8", CultureInfo.InvariantCulture), StringComparer.Ordinal);
        return checkpoint.AllTensors().ToDictionary(e => e.Tensor.Name, e => Convert.ToHexStringLower(SHA256.HashData(e.File.View(e.Tensor).Span)), StringComparer.Ordinal);
    }

    /// <summary>
    /// Every shard of the worker must hold exactly the checkpoint's tensors, byte for byte. With <paramref name="slicedCrcs"/> (shards that keep
    /// tensor-parallel slices): the tensors a shard keeps whole byte for byte, and every sliced tensor's slices, put back together, with the
    /// checkpoint's CRC-32.
    /// </summary>
    private static async Task<bool> VerifyAsync(Uri worker, Dictionary<string, string> source, Dictionary<string, string>? slicedCrcs, int shards, CancellationToken ct)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        using var doc = JsonDocument.Parse(await http.GetStringAsync(new Uri(worker, "/v1/weights/digest"), ct).ConfigureAwait(false));
        var seen = 0;
        var anySliced = new HashSet<string>(StringComparer.Ordinal);
        foreach (var shard in doc.RootElement.GetProperty("shards").EnumerateArray())
        {
            var tensors = shard.GetProperty("tensors").EnumerateObject().ToDictionary(t => t.Name, t => t.Value.GetString(), StringComparer.Ordinal);
            var sliced = slicedCrcs is null ? [] : shard.GetProperty("sliced").EnumerateArray().Select(e => e.GetString()!).ToHashSet(StringComparer.Ordinal);
            if (tensors.Count != source.Count || source.Any(kv => !tensors.TryGetValue(kv.Key, out var h) || h != kv.Value && !sliced.Contains(kv.Key)))
            {
                return false;
            }
            anySliced.UnionWith(sliced);
            seen++;
        }
        if (slicedCrcs is not null)
        {
            // Every tensor some shard holds a slice of, put back together, is the checkpoint's (with one shard nothing is sliced).
            var assembled = doc.RootElement.GetProperty("assembled_crc32").EnumerateObject().ToDictionary(a => a.Name, a => a.Value.GetString(), StringComparer.Ordinal);
            if (anySliced.Any(n => !assembled.ContainsKey(n)) || assembled.Any(a => !slicedCrcs.TryGetValue(a.Key, out var crc) || crc != a.Value))
            {
                return false;
            }
        }
        return seen == shards;
    }
}
