using CheckpointEngine.Hosting;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Cli.Progress;
using CheckpointEngine.Hosting.Tracing;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Quantization;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Server;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine update</c>: one rank of the update flow of the original's example, run on every rank
/// (usually through <c>launch</c>): register this rank's share, wait for the engine, gather metas,
/// update, print how long each phase took. With <c>--load-metas-file</c> the ranks join a running fleet
/// instead: they register nothing and pull the weights over P2P from the owners named in the file.
/// After each update the ranks share their bucket timings: every rank prints the pipeline efficiency,
/// and with <c>--trace</c> rank 0 writes them all as one trace-event file.
/// </summary>
internal static class UpdateCommand
{
    public static Command Create(TextWriter stdout)
    {
        var path = new Option<string?>("--checkpoint-path") { Description = "checkpoint directory or file (this rank registers its share)" };
        var endpoint = new Option<string>("--endpoint") { Description = "the inference engine's base URL (its /health and /collective_rpc)", Required = true };
        var groupSize = new Option<int>("--inference-parallel-size") { Description = "ranks per inference engine (its tensor-parallel size)", DefaultValueFactory = _ => 1 };
        var method = new Option<string>("--update-method") { Description = "broadcast, p2p, or all (broadcast then p2p)", DefaultValueFactory = _ => "broadcast" };
        method.AcceptOnlyFromAmong("broadcast", "p2p", "all");
        var name = new Option<string>("--checkpoint-name") { Description = "name to register the checkpoint under", DefaultValueFactory = _ => "checkpoint" };
        var saveMetas = new Option<string?>("--save-metas-file") { Description = "rank 0 saves the gathered metas here (for instances that join later)" };
        var loadMetas = new Option<string?>("--load-metas-file") { Description = "join: take the owners' metas from this file and update over P2P" };
        var metasFrom = new Option<string?>("--metas-from") { Description = "join: fetch the owners' metas from the fleet's rendezvous store (its MASTER_ADDR:MASTER_PORT) and update over P2P" };
        var uds = new Option<string?>("--uds") { Description = "reach the engine's HTTP server on this Unix socket" };
        var engine = new Option<string>("--engine") { Description = "the engine's HTTP surface: vllm (/health, /collective_rpc), sglang (/ping, /update_weights_from_ipc), or auto (told apart by SGLang's route)", DefaultValueFactory = _ => "auto" };
        engine.AcceptOnlyFromAmong("auto", "vllm", "sglang");
        var sleep = new Option<double>("--sleep-time") { Description = "seconds to keep serving (P2P reads) after the update", DefaultValueFactory = _ => 0 };
        var timeout = new Option<double>("--timeout") { Description = "deadline in seconds for each wait of the update", DefaultValueFactory = _ => 300 };
        var repeat = new Option<int>("--repeat") { Description = "updates per method (the first pays for first touches; later ones show the steady state)", DefaultValueFactory = _ => 1 };
        repeat.Validators.Add(r => { if (r.GetValueOrDefault<int>() is < 1 or > 100) r.AddError("--repeat must be in [1, 100]"); });
        var quantize = new Option<string?>("--quantize") { Description = "convert while registering: fp8 (block-scaled E4M3, as `quantize` writes it; the checkpoint's config.json is followed)" };
        quantize.AcceptOnlyFromAmong("fp8");
        var verify = new Option<bool>("--verify") { Description = "send each tensor's registration-time CRC-32; the workers check what they received and fail the update on a mismatch" };
        var relays = new Option<string>("--class-relays")
        {
            Description = "shard-aware updates across hosts: relay each class's part over its own group (on), never (off), or auto (on the host backend; on GPUs with several buckets in flight, or from 96 hosts)",
            DefaultValueFactory = _ => "auto",
        };
        relays.AcceptOnlyFromAmong("auto", "on", "off");
        var inFlight = new Option<int?>("--buckets-in-flight")
        {
            Description = "relayed buckets that may move at once (shard-aware updates across hosts; each beyond the first takes a broadcast buffer), 1 to 8; "
                + "default: 3 on GPUs once the engines declare what they keep, else 1",
        };
        inFlight.Validators.Add(r => { if (r.GetValueOrDefault<int?>() is < 1 or > 8) r.AddError("--buckets-in-flight must be in [1, 8]"); });
        var device = DeviceOption.Create();
        var allowNoToken = AllowNoTokenOption.Create();
        var transport = P2PTransportOption.Create();
        var trace = new Option<string?>("--trace") { Description = "rank 0 writes every rank's per-bucket stage times here as Chrome/Perfetto trace JSON (with --update-method all: FILE.broadcast.json and FILE.p2p.json)" };
        groupSize.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--inference-parallel-size must be at least 1"); });
        sleep.Validators.Add(r => { if (r.GetValueOrDefault<double>() < 0) r.AddError("--sleep-time must not be negative"); });
        timeout.Validators.Add(r => { if (!(r.GetValueOrDefault<double>() > 0)) r.AddError("--timeout must be a positive number of seconds"); });
        trace.Validators.Add(ValidateTracePath);
        var command = new Command("update", "Register this rank's share of a checkpoint and update the inference engine (run on every rank).")
        {
            path, endpoint, groupSize, method, name, saveMetas, loadMetas, metasFrom, uds, engine, sleep, timeout, repeat, trace, device, quantize, verify, allowNoToken, transport, relays, inFlight,
        };
        command.Validators.Add(r =>
        {
            var sources = new[] { r.GetValue(path), r.GetValue(loadMetas), r.GetValue(metasFrom) }.Count(v => v is not null);
            if (sources != 1)
            {
                r.AddError("give exactly one of --checkpoint-path (own a share), --load-metas-file or --metas-from (join over P2P)");
            }
            if (r.GetValue(path) is null && r.GetResult(method) is not null && r.GetValue(method) != "p2p")
            {
                r.AddError("with --load-metas-file or --metas-from the update is P2P: --update-method must be p2p");
            }
            if (r.GetValue(path) is null && r.GetValue(quantize) is not null)
            {
                r.AddError("--quantize converts what this rank registers: it needs --checkpoint-path");
            }
        });
        command.SetAction(async (result, ct) =>
        {
            // Ctrl-C or SIGTERM (a launcher stopping its ranks) cancels: the rank leaves through its disposals (its segments go with
            // it) instead of dying where it stands. A synchronous Invoke does not turn SIGTERM into cancellation by itself.
            using var stop = new StopSignal(ct);
            var fp8 = result.GetValue(quantize) is not null && result.GetValue(path) is { } p ? Fp8Quantization.ForCheckpoint(p) : null;
            var run = new Run(stdout, result.GetValue(name)!, TimeSpan.FromSeconds(result.GetValue(timeout)), result.GetValue(trace), result.GetValue(repeat), result.GetValue(device), fp8,
                result.GetValue(allowNoToken), result.GetValue(verify), result.GetValue(engine) switch { "vllm" => EngineApi.Vllm, "sglang" => EngineApi.Sglang, _ => null }, result.GetValue(transport),
                Environment.GetEnvironmentVariable(ProgressLine.Variable) == "lines", result.GetValue(relays) switch { "on" => true, "off" => false, _ => null }, result.GetValue(inFlight));
            return await run.ExecuteAsync(result.GetValue(path), result.GetValue(endpoint)!, result.GetValue(groupSize),
                result.GetValue(path) is not null ? result.GetValue(method)! : "p2p", result.GetValue(saveMetas), result.GetValue(loadMetas), result.GetValue(metasFrom),
                result.GetValue(uds), TimeSpan.FromSeconds(result.GetValue(sleep)), stop.Token).ConfigureAwait(false);
        });
        return command;
    }

    /// <summary>The trace is written after the update: a folder that is not there is a usage error up front, not a failure at the end.</summary>
    internal static void ValidateTracePath(System.CommandLine.Parsing.OptionResult r)
    {
        var path = r.GetValueOrDefault<string?>();
        if (path is not null && Path.GetDirectoryName(Path.GetFullPath(path)) is { } dir && !Directory.Exists(dir))
        {
            r.AddError($"--trace {path}: directory {dir} does not exist");
        }
    }

    private sealed class Run(TextWriter stdout, string name, TimeSpan timeout, string? tracePath, int repeat, string? device, Fp8Quantization? fp8, bool allowNoToken, bool verifying, EngineApi? engineApi, string? transport, bool progressLines, bool? classRelays, int? bucketsInFlight)
    {
        public async Task<int> ExecuteAsync(string? path, string endpoint, int groupSize, string method, string? saveMetas, string? loadMetas, string? metasFrom,
            string? uds, TimeSpan sleep, CancellationToken ct)
        {
            var clock = Stopwatch.StartNew();
            Stage("join");
            await using var rank = await RankHost.StartAsync(P2PTransportOption.Apply(AllowNoTokenOption.Config(allowNoToken), transport), device, timeout, ct).ConfigureAwait(false);
            var (world, ps) = (rank.World, rank.Server);
            Phase($"join ({rank.Backend.Kind.ToString().ToLowerInvariant()} device {rank.Backend.Device.Id})", clock);
            Stage(path is null ? "metas" : "register");
            if (loadMetas is not null)
            {
                ps.SetMetas(GlobalMetas.Load(loadMetas) is var m && m.Checkpoint == name ? m : throw new CheckpointEngineException($"{loadMetas} holds metas of '{m.Checkpoint}', not '{name}' (see --checkpoint-name)"));
                Phase("load metas", clock);
            }
            else if (metasFrom is not null)
            {
                ps.SetMetas(await ParameterServer.FetchMetasAsync(metasFrom, name, world.Config.Token, timeout, ct).ConfigureAwait(false));
                Phase($"fetch metas from {metasFrom}", clock);
            }
            else
            {
                using (var checkpoint = Checkpoint.Open(path!))
                {
                    var share = CheckpointSplit.ByTensor(checkpoint, world.Rank, world.Size);
                    var registered = ps.RegisterCheckpoint(name, share, options: new RegisterOptions { UsePool = true, Quantize = fp8 });
                    Phase($"register{(fp8 is null ? "" : " as FP8")} ({registered.TensorCount} tensors, {ByteSize.Format(registered.TensorBytes)})", clock);
                }
                Stage("gather metas");
                var metas = await ps.GatherMetasAsync(name, timeout, ct).ConfigureAwait(false);
                Phase("gather metas", clock);
                if (saveMetas is not null && world.Rank == 0)
                {
                    metas.Save(saveMetas);
                    stdout.WriteLine($"saved metas to {saveMetas}");
                }
            }
            Stage("wait for engine");
            var api = await WaitForEngineAsync(endpoint, uds, ct).ConfigureAwait(false);
            Phase($"wait for the engine ({(engineApi is null ? "detected " : "")}{api.ToString().ToLowerInvariant()})", clock);
            var trigger = EngineTrigger.Http(endpoint, groupSize, uds, api: api);
            var options = new UpdateOptions { Timeout = timeout, Verify = verifying, ClassRelays = classRelays, BucketsInFlight = bucketsInFlight };
            var methods = method == "all" ? ["broadcast", "p2p"] : new[] { method };
            foreach (var m in methods)
            {
                UpdateTrace? trace = null;
                for (var k = 0; k < repeat; k++)
                {
                    var update = Finished(ps.UpdateAsync(name, m == "p2p" ? UpdateMode.P2P(Enumerable.Range(0, world.Size)) : UpdateMode.Broadcast, trigger, options, ct));
                    await ShowProgressAsync(ps, update).ConfigureAwait(false);
                    var (report, finished) = await update.ConfigureAwait(false);
                    Stage(m, report);
                    trace = await GatherTraceAsync(world, m, report, finished, ct).ConfigureAwait(false);
                    Report(m, report, trace.Efficiency(), k);
                    if (TraceLeg.Totals(trace.Legs()) is { Count: > 0 } legs)
                    {
                        var (link, bytes, _, _, rate) = legs[0];
                        stdout.WriteLine($"update ({m}): slowest link {link}: {Rate(rate)} over {ByteSize.Format(bytes)} (over the shorter of its two ends' times)");
                    }
                }
                if (tracePath is not null && world.Rank == 0 && trace is not null)
                {
                    var file = methods.Length > 1 ? UpdateTrace.PathFor(tracePath, m) : tracePath;
                    ChromeTraceWriter.WriteFile(trace, file);
                    stdout.WriteLine($"wrote trace {file} ({trace.Ranks.Count} ranks, {trace.Ranks.Sum(r => r.Buckets.Count)} bucket timings)");
                }
                clock.Restart();
            }
            if (sleep > TimeSpan.Zero)
            {
                Stage("serving");
                stdout.WriteLine($"serving P2P reads for {sleep.TotalSeconds:F0} s");
                try
                {
                    await Task.Delay(sleep, ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested)
                {
                    stdout.WriteLine("stopped while serving"); // The update is done: stopping the fleet is how serving ends.
                    Stage("done");
                    return 0;
                }
            }
            await world.Group.BarrierAsync(timeout, ct).ConfigureAwait(false); // Owners leave together: nobody is mid-read.
            Stage("done");
            return 0;
        }

        /// <summary>The report and the wall-clock time the update returned, which lines this rank up with the others in a trace.</summary>
        private static async Task<(UpdateReport Report, DateTimeOffset Finished)> Finished(Task<UpdateReport> update)
        {
            var report = await update.ConfigureAwait(false);
            return (report, DateTimeOffset.UtcNow);
        }

        /// <summary>Every rank's bucket timings of this update (small JSON blobs, one all-gather).</summary>
        private Task<UpdateTrace> GatherTraceAsync(World world, string method, UpdateReport report, DateTimeOffset finished, CancellationToken ct) =>
            UpdateTrace.GatherAsync(world.Group, name, method, report, finished, timeout, ct);

        /// <summary>For a launcher's progress view (see <see cref="LaunchView"/>): this rank's stage as a machine line.</summary>
        private void Stage(string stage, UpdateReport? done = null)
        {
            if (progressLines)
            {
                stdout.WriteLine((done is null
                    ? new ProgressLine(stage)
                    : new ProgressLine(stage, done.Buckets.Count, done.Buckets.Count, done.BytesDelivered, done.BytesDelivered, done.Duration.TotalSeconds)).Format());
            }
        }

        /// <summary>
        /// While an update runs, shows its progress: for a launcher's view, a progress line a few times a second;
        /// else, once it runs longer than a second, rewritten in place on an interactive console, one log line per second otherwise.
        /// </summary>
        private async Task ShowProgressAsync(ParameterServer ps, Task update)
        {
            var interactive = ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected;
            var shown = false;
            while (await Task.WhenAny(update, Task.Delay(progressLines ? 250 : 1000)).ConfigureAwait(false) != update)
            {
                if (ps.Progress is not { } p)
                {
                    continue;
                }
                if (progressLines)
                {
                    stdout.WriteLine(new ProgressLine(p.Mode, p.BucketsDone, p.BucketsTotal, p.BytesDone, p.BytesTotal, (DateTimeOffset.UtcNow - p.Started).TotalSeconds).Format());
                }
                else
                {
                    var line = $"update ({p.Mode}): {p.BucketsDone}/{p.BucketsTotal} buckets, {ByteSize.Format(p.BytesDone)} of {ByteSize.Format(p.BytesTotal)}, {(DateTimeOffset.UtcNow - p.Started).TotalSeconds:F0} s";
                    if (interactive)
                    {
                        stdout.Write($"\r{line}   ");
                        shown = true;
                    }
                    else
                    {
                        stdout.WriteLine(line);
                    }
                }
            }
            if (shown)
            {
                stdout.WriteLine();
            }
        }

        private void Phase(string what, Stopwatch clock)
        {
            stdout.WriteLine($"{what}: {clock.Elapsed.TotalSeconds:F3} s");
            clock.Restart();
        }

        /// <summary>A human line and a machine line (the demo reads the latter).</summary>
        /// <param name="k">Which update of this method (the machine line carries it as <c>update=K</c>).</param>
        private void Report(string method, UpdateReport r, PipelineEfficiency efficiency, int k)
        {
            var gbps = r.BytesDelivered / Math.Max(r.Duration.TotalSeconds, 1e-9) / 1e9;
            stdout.WriteLine($"update ({method}): {ByteSize.Format(r.BytesDelivered)} in {r.Duration.TotalSeconds:F3} s ({gbps:F2} GB/s), " +
                $"{r.Buckets.Count} buckets of up to {ByteSize.Format(r.BucketSize)} in {r.Slots} buffers{(r.BucketsInFlight > 1 ? $", {r.BucketsInFlight} in flight" : "")}{(r.RelayedBuckets > 0 ? $", {r.RelayedBuckets} relayed" : "")}; stage sums: stage {r.HostToDevice.TotalSeconds:F3} s, broadcast {r.Broadcast.TotalSeconds:F3} s, reload {r.Reload.TotalSeconds:F3} s");
            if (r.P2PTransport is { } read)
            {
                stdout.WriteLine($"update ({method}): read over {read}");
            }
            stdout.WriteLine($"update ({method}): {efficiency.Describe(method)}");
            foreach (var l in r.LinkTotals())
            {
                stdout.WriteLine($"update ({method}): link {(l.Sent ? "→" : "←")} {l.PeerHost}: {ByteSize.Format(l.Bytes)} {(l.Sent ? "sent, blocked" : "received, waited")} {l.Busy.TotalSeconds:F3} s ({Rate(l.Rate)})");
            }
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"result method={method} bytes={r.BytesDelivered} seconds={r.Duration.TotalSeconds:F6} buckets={r.Buckets.Count} stage={r.HostToDevice.TotalSeconds:F6} broadcast={r.Broadcast.TotalSeconds:F6} reload={r.Reload.TotalSeconds:F6} efficiency={efficiency.Value:F6} update={k}{(r.P2PTransport is { } t ? $" transport={t}" : "")}"));
        }

        private static string Rate(double bytesPerSecond) => double.IsFinite(bytesPerSecond) ? $"{bytesPerSecond / 1e9:F3} GB/s" : "never waited";

        /// <summary>Polls the engine until it answers (the original's examples do the same); with --engine auto, tells vLLM from SGLang.</summary>
        private Task<EngineApi> WaitForEngineAsync(string endpoint, string? uds, CancellationToken ct) =>
            EngineProbe.WaitAsync(endpoint, uds, null, engineApi, timeout, ct);
    }
}
