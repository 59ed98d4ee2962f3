using CheckpointEngine.Runtime;
using CheckpointEngine.Worker;
using CheckpointEngine.Hosting;
using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Cli.Commands;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.ReferenceEngine;
using CheckpointEngine.Planning;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// Runs <c>ckpt-engine bench</c>: the baselines first (on a quiet machine), then per size a synthetic
/// checkpoint and per (ranks, method) a fresh in-process reference worker and one launch of N ranks
/// as real processes through <see cref="Launcher"/>, like <c>demo</c>. Each rank (<see cref="BenchRank"/>)
/// updates <c>repeat</c> + 1 times; the first update is the warm-up (reported apart as what a one-shot
/// <c>update</c> sees), the others are the samples. <c>registration</c> and <c>quantize</c> run once per size in
/// this process (<see cref="RegistrationBench"/>, <see cref="QuantizeBench"/>); <c>collective</c> launches ranks the same way (<see cref="CollectiveBench"/>).
/// </summary>
internal static class BenchRunner
{
    /// <summary>How often rank processes' peak memory is read.</summary>
    public static readonly TimeSpan SampleInterval = TimeSpan.FromMilliseconds(50);

    public static async Task<BenchReport> RunAsync(BenchSettings settings, TextWriter progress, CancellationToken ct = default)
    {
        var date = DateTimeOffset.UtcNow;
        var baselines = MeasureBaselines(Math.Clamp(settings.Sizes.Max(), 64L << 20, 1L << 30), progress,
            settings.Methods.Any(m => BenchSettings.UpdateMethods.Contains(m)) ? [.. settings.Ranks.Where(r => r > 1).Distinct()] : [], settings.SeparateHosts);
        var results = new List<ConfigurationResult>();
        var peers = new List<TorchPeer.Result>();
        var hostPeakReset = true;
        var root = Directory.CreateTempSubdirectory("ckpt-engine-bench-").FullName;
        try
        {
            foreach (var size in settings.Sizes)
            {
                var dir = Path.Combine(root, BenchSettings.SizeLabel(size));
                long bytes = 0;
                if (settings.Methods.Any(BenchSettings.NeedsCheckpoint))
                {
                    var clock = Stopwatch.StartNew();
                    // Fixed shape for every rank count, so rows for 1 and 4 ranks move the same tensors.
                    Commands.ModelOption.Write(settings.Model, dir, size, shards: 4, layers: 16);
                    using (var checkpoint = Checkpoint.Open(dir))
                    {
                        bytes = checkpoint.TotalBytes;
                    }
                    progress.WriteLine($"bench: wrote a {ByteSize.Format(bytes)} checkpoint for --size {BenchSettings.SizeLabel(size)} in {clock.Elapsed.TotalSeconds:F1} s");
                }
                if (settings.Methods.Contains(BenchSettings.Registration))
                {
                    hostPeakReset &= PeakMemory.ResetSelf();
                    results.AddRange(RegistrationBench.Measure(dir, size, settings.Repeat, progress, ct));
                }
                if (settings.Methods.Contains(BenchSettings.Quantize))
                {
                    hostPeakReset &= PeakMemory.ResetSelf();
                    results.AddRange(QuantizeBench.Measure(dir, size, settings.Repeat, progress, ct));
                }
                foreach (var ranks in settings.Ranks)
                {
                    foreach (var method in settings.Methods)
                    {
                        if (method is BenchSettings.Registration or BenchSettings.Quantize)
                        {
                            continue; // Once per size, above: they do not depend on ranks.
                        }
                        if (method == BenchSettings.Collective)
                        {
                            if (ranks < 2)
                            {
                                progress.WriteLine($"bench: {BenchSettings.Collective}, 1 rank: skipped (a broadcast needs receivers)");
                                continue;
                            }
                            hostPeakReset &= PeakMemory.ResetSelf();
                            results.AddRange(await CollectiveBench.MeasureAsync(ranks, size, settings.Repeat, progress, ct).ConfigureAwait(false));
                            continue;
                        }
                        // A fresh worker per configuration: none inherits another's warm shard memory.
                        var ids = Commands.DeviceOption.WorkerIds(settings.Device, ranks, "bench");
                        var sharding = method is BenchSettings.TpFull or BenchSettings.TpSharded;
                        await using var worker = await ReferenceWorker.StartAsync(new ReferenceWorkerOptions
                        {
                            TensorParallel = ranks, DeviceIds = ids, ShardByTp = sharding, DeclareWants = method == BenchSettings.TpSharded,
                        }, cancellationToken: ct).ConfigureAwait(false);
                        using (var checkpoint = Checkpoint.Open(dir))
                        {
                            // The engine's model exists before its first update (as after vLLM's dummy load): 'first s' is the transfer's.
                            worker.AllocateWeights(checkpoint.AllTensors().Select(e => (e.Tensor.Name, e.Tensor.DType, e.Tensor.Shape.ToArray())));
                        }
                        hostPeakReset &= PeakMemory.ResetSelf();
                        var run = new Configuration(method, ranks, size, dir, worker.Address, ids, settings.BucketSize, settings.TraceDirectory, settings.Device) { Prepare = settings.Prepare, SeparateHosts = settings.SeparateHosts };
                        results.Add(await run.MeasureAsync(bytes, settings.Repeat, progress, ct).ConfigureAwait(false));
                    }
                    // The peer: torch.distributed broadcasts of the same checkpoint between as many processes, where a Python has torch.
                    if (ranks >= 2 && settings.Methods.Any(m => BenchSettings.UpdateMethods.Contains(m, StringComparer.Ordinal)) && TorchPeer.Available
                        && TorchPeer.Measure(dir, ranks, size, settings.Repeat, progress) is { } peer)
                    {
                        progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"bench: torch.distributed (gloo), {ranks} ranks, {BenchSettings.SizeLabel(size)}: per tensor {peer.PerTensor:F3} s, bucketed {peer.Bucketed:F3} s"));
                        peers.Add(peer);
                    }
                }
                if (Directory.Exists(dir))
                {
                    Directory.Delete(dir, recursive: true);
                }
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        var sampled = results.Any(r => r.RankPeaks.Count > 0);
        return new BenchReport(MachineInfo.Current(), date, settings, baselines, results, sampled, hostPeakReset) { Peers = peers };
    }

    /// <param name="atOnce">Rank counts whose workers receive at once: each gets a memcpy baseline with as many copies at once, and with
    /// <paramref name="separateHosts"/> (every rank reads over TCP) a TCP one with as many connections at once.</param>
    private static List<Baseline> MeasureBaselines(long bytes, TextWriter progress, IReadOnlyList<int> atOnce, bool separateHosts)
    {
        progress.WriteLine($"bench: measuring baselines over {ByteSize.Format(bytes)}");
        var threads = Environment.ProcessorCount;
        var (write, copyOut) = Baselines.SharedMemory(bytes, Baselines.SelfReader(), TimeSpan.FromSeconds(120));
        return
        [
            new Baseline(Baseline.Memcpy, "memcpy, 1 thread", bytes, Baselines.Memcpy(bytes)),
            new Baseline(Baseline.MemcpyAllThreads, $"memcpy, {threads} threads", bytes, Baselines.MemcpyParallel(bytes, threads)),
            new Baseline(Baseline.SharedMemory, "shared memory, 2 processes", bytes, copyOut,
                $"copy-out of a /dev/shm segment another process wrote in {write.ToString("F4", CultureInfo.InvariantCulture)} s"),
            new Baseline(Baseline.Tcp, "TCP loopback, 1 connection", bytes, Baselines.RawTcp(bytes)),
            .. atOnce.SelectMany(n =>
            {
                // Each of n threads copies its bytes (n workers each reloading what they received), each of n connections carries them;
                // at most 4 GiB of buffers in all: the rate, not the size, is the figure.
                var each = Math.Clamp((2L << 30) / n, 16L << 20, bytes);
                Baseline memcpy = new(Baseline.AtOnce(Baseline.Memcpy, n), $"memcpy, {n} threads at once (per thread)", each, Baselines.MemcpyParallel(each * n, n));
                return separateHosts
                    ? [memcpy, new Baseline(Baseline.AtOnce(Baseline.Tcp, n), $"TCP loopback, {n} connections at once (per connection)", each, Baselines.RawTcp(each, n))]
                    : new[] { memcpy };
            }),
        ];
    }

    /// <summary>One (method, ranks, size) against a running worker.</summary>
    private sealed record Configuration(string Method, int Ranks, long Size, string Dir, Uri Worker, IReadOnlyList<string> Ids, long? BucketSize, string? TraceDirectory,
        Runtime.DeviceKind Device)
    {
        public bool Prepare { get; init; }

        public bool SeparateHosts { get; init; }

        private string Name => $"{Method}, {Ranks} rank{(Ranks == 1 ? "" : "s")}, {BenchSettings.SizeLabel(Size)}";

        private List<string> RankArguments(int updates, TimeSpan timeout)
        {
            List<string> args = ["bench", BenchCommand.RankCommand, "--checkpoint-path", Dir, "--endpoint", Worker.ToString(),
                "--inference-parallel-size", Ranks.ToString(CultureInfo.InvariantCulture), "--update-method", Method,
                "--updates", updates.ToString(CultureInfo.InvariantCulture), "--timeout", RankLaunch.Seconds(timeout)];
            if (Prepare)
            {
                args.Add("--prepare");
            }
            if (TraceDirectory is not null)
            {
                args.AddRange(["--trace", Path.Combine(TraceDirectory, $"trace-{Method}-{Ranks}r-{BenchSettings.SizeLabel(Size)}.json")]);
            }
            return args;
        }

        public async Task<ConfigurationResult> MeasureAsync(long bytes, int repeat, TextWriter progress, CancellationToken ct)
        {
            if (Method == BenchSettings.P2PJoin)
            {
                return await MeasureJoinAsync(bytes, repeat, progress, ct).ConfigureAwait(false);
            }
            var timeout = RankLaunch.Timeout(bytes, Ranks);
            var updates = repeat + 1;
            var environment = RankVariables();
            if (BenchSettings.IsP2P(Method, out var transport) && transport is not null)
            {
                environment[RankConfig.P2PTransportVariable] = transport;
            }
            var options = new LaunchOptions
            {
                NProc = Ranks,
                Command = Launcher.SelfCommand(RankArguments(updates, timeout)),
                Environment = environment,
                RankEnvironment = r => SeparateHosts
                    ? new Dictionary<string, string?> { [RankConfig.DeviceIdVariable] = Ids[r], [RankConfig.HostIdVariable] = $"{Ids[r]}-host" }
                    : new Dictionary<string, string?> { [RankConfig.DeviceIdVariable] = Ids[r] },
            };
            progress.WriteLine($"bench: {Name}: {Ranks} rank process{(Ranks == 1 ? "" : "es")}, {updates} updates each");
            var (slowest, peaks, prepared) = await RankLaunch.RunAsync(Name, Method, options, updates, timeout * (updates + 1), ct).ConfigureAwait(false);
            ReportTimes(progress, slowest, prepared);
            return Result(slowest, peaks, prepared);
        }

        /// <summary>What every rank of the configuration gets: the device backend's variable and, when given, the largest bucket.</summary>
        private Dictionary<string, string?> RankVariables()
        {
            var environment = new Dictionary<string, string?>([Commands.DeviceOption.RankVariable(Device)]);
            if (BucketSize is { } b)
            {
                environment[RankConfig.MaxBucketSizeVariable] = (b / (double)(1L << 30)).ToString("R", CultureInfo.InvariantCulture);
            }
            return environment;
        }

        private void ReportTimes(TextWriter progress, IReadOnlyList<ResultLine> slowest, ResultLine? prepared) =>
            progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"bench: {Name}: {(prepared is null ? "" : $"prepared in {prepared.Seconds:F3} s, then ")}{string.Join(", ", slowest.Select(l => l.Seconds.ToString("F3", CultureInfo.InvariantCulture)))} s (the first is the warm-up)"));

        private ConfigurationResult Result(IReadOnlyList<ResultLine> slowest, IReadOnlyDictionary<int, long> peaks, ResultLine? prepared) =>
            new(Method, Ranks, Size, slowest[^1].Bytes, slowest[0], slowest.Skip(1).ToList(), peaks, PeakMemory.Self()) { Prepared = prepared };

        /// <summary>
        /// An elastic join: owner ranks (a world of their own) register, gather, save the metas and serve; once the metas are there, as many
        /// joiner ranks (another world, the same token) load them and update the worker over P2P, timed as any configuration; then the
        /// owners are told to stop through a file and must exit cleanly.
        /// </summary>
        private async Task<ConfigurationResult> MeasureJoinAsync(long bytes, int repeat, TextWriter progress, CancellationToken ct)
        {
            var timeout = RankLaunch.Timeout(bytes, Ranks);
            var updates = repeat + 1;
            var work = Path.Combine(Path.GetDirectoryName(Dir)!, $"join-{Ranks}");
            Directory.CreateDirectory(work);
            var (metas, stop) = (Path.Combine(work, "metas.json"), Path.Combine(work, "stop"));
            var token = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
            var environment = RankVariables();
            LaunchOptions Launch(string role, int n, Func<int, string> deviceId) => new()
            {
                NProc = n,
                Command = Launcher.SelfCommand([.. RankArguments(updates, timeout * (updates + 2)), "--role", role, "--metas-file", metas, "--stop-file", stop]),
                Environment = environment,
                Token = token,
                RankEnvironment = r => new Dictionary<string, string?> { [RankConfig.DeviceIdVariable] = deviceId(r) },
            };
            progress.WriteLine($"bench: {Name}: {Ranks} owner and {Ranks} joiner rank process{(Ranks == 1 ? "" : "es")}, {updates} updates each");
            var (ownerOut, ownerErr) = (new StringWriter(), new StringWriter());
            using var ownersStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var owners = Launcher.RunAsync(Launch(BenchRank.OwnerRole, Ranks, r => $"{Ids[r]}-owner"), ownerOut, ownerErr, ownersStop.Token);
            try
            {
                var waited = Stopwatch.StartNew();
                while (!File.Exists(metas))
                {
                    if (owners.IsCompleted || waited.Elapsed > timeout)
                    {
                        throw new Server.UpdateFailedException($"bench {Name}: the owners {(owners.IsCompleted ? $"exited (code {(owners.IsCompletedSuccessfully ? owners.Result : -1)})" : $"did not save their metas within {timeout.TotalSeconds:F0} s")} before the joiners could start:\n  {ownerErr}{ownerOut}");
                    }
                    await Task.Delay(50, ct).ConfigureAwait(false);
                }
                var (slowest, peaks, prepared) = await RankLaunch.RunAsync(Name, Method, Launch(BenchRank.JoinerRole, Ranks, r => Ids[r]), updates, timeout * (updates + 1), ct,
                    notSampled: BenchRank.OwnerRole).ConfigureAwait(false);
                ReportTimes(progress, slowest, prepared);
                await File.WriteAllTextAsync(stop, "", ct).ConfigureAwait(false);
                var exit = await owners.WaitAsync(timeout, ct).ConfigureAwait(false);
                return exit == 0
                    ? Result(slowest, peaks, prepared)
                    : throw new Server.UpdateFailedException($"bench {Name}: the owners exited with code {exit}:\n  {ownerErr}");
            }
            finally
            {
                File.WriteAllText(stop, ""); // However the joiners ended, the owners stop serving (the launch is cancelled if they do not).
                if (!owners.IsCompleted)
                {
                    await ownersStop.CancelAsync().ConfigureAwait(false);
                }
                await owners.ContinueWith(static _ => { }, TaskScheduler.Default).ConfigureAwait(false);
            }
        }
    }
}
