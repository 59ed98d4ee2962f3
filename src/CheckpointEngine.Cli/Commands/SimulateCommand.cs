using CheckpointEngine.Hosting;
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using CheckpointEngine.Hosting.Tracing;
using CheckpointEngine.Server;
using CheckpointEngine.Simulation;
using CheckpointEngine.Simulation.Calibration;
using CheckpointEngine.Simulation.Clusters;
using CheckpointEngine.Simulation.Models;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine simulate</c>: predicts an update's time on a cluster nobody here has, with the real planner
/// and a cost model calibrated on the original's published table; <c>--reproduce</c> prints that calibration.
/// </summary>
internal static class SimulateCommand
{
    /// <summary>Traces of big clusters keep the first nodes only, so that viewers can open them.</summary>
    public const int MaxTraceNodes = 32;

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = new Option<string?>("--model") { Description = $"a preset ({string.Join(", ", ModelPresets.All.Select(p => p.Name))}) or a checkpoint: directory, index or safetensors file (headers only are read)" };
        var cluster = new Option<string>("--cluster") { Description = $"node type: {string.Join(", ", ClusterPresets.All.Select(c => c.Name))}", DefaultValueFactory = _ => "h20" };
        var gpus = new Option<int>("--gpus") { Description = "GPUs in the cluster (one rank each)", DefaultValueFactory = _ => 16 };
        var tp = new Option<int>("--tp") { Description = "tensor-parallel size of one inference instance", DefaultValueFactory = _ => 16 };
        var method = new Option<string>("--method") { Description = "broadcast (every rank) or p2p (the first instance reads from all owners)", DefaultValueFactory = _ => "broadcast" };
        var design = new Option<string>("--design")
        {
            Description = "original (MoonshotAI's schedule), ours (as built), shard-aware (the GPU loop as built: scatter in the stager's node, class relays between nodes, "
                + "several stagers' buckets in flight across nodes, see --in-flight), shard-aware-broadcast (the first update with declarations: every GPU receives the bucket), "
                + "or the what-if shard-aware-pipelined (one at a time, the scatter of k+1 overlapping the relays of k)",
            DefaultValueFactory = _ => "ours",
        };
        var inFlight = new Option<int?>("--in-flight") { Description = $"buckets in flight at once for --design shard-aware (default: {Scenario.DefaultInFlight} across nodes by broadcast, as built; else 1)" };
        var relays = new Option<string>("--class-relays")
        {
            Description = "for --design shard-aware: relay classes between nodes (on), never (off), or as the parameter server picks on GPUs (auto: with several in flight, or from 96 nodes)",
            DefaultValueFactory = _ => "auto",
        };
        relays.AcceptOnlyFromAmong("auto", "on", "off");
        var json = new Option<bool>("--json") { Description = "print one JSON document" };
        var trace = new Option<string?>("--trace") { Description = $"write the simulated timeline as a Chrome/Perfetto trace (a process per node, named by its first rank; at most {MaxTraceNodes} nodes)" };
        var reproduce = new Option<bool>("--reproduce") { Description = "fit the cost model on the original's 8/16-GPU rows, predict its 256-GPU rows, and print every row with ours and shard-aware (by broadcast, as the first update with declarations, and as built)" };
        var perNode = new Option<int?>("--gpus-per-node") { Description = "override the cluster's GPUs per node" };
        var free = new Option<string?>("--free-memory") { Description = "override the free device memory per GPU for update buffers, e.g. 18GiB" };
        var maxBucket = new Option<string?>("--max-bucket-size") { Description = "largest bucket, e.g. 4GiB (default 8GiB, as both engines)" };
        var h2d = new Option<double?>("--h2d-gbps") { Description = "override host-to-device GB/s per GPU" };
        var nvlink = new Option<double?>("--nvlink-gbps") { Description = "override NVLink GB/s per GPU and direction" };
        var nics = new Option<int?>("--nics") { Description = "override NICs per node" };
        var nic = new Option<double?>("--nic-gbps") { Description = "override GB/s per NIC and direction" };
        var command = new Command("simulate", "Simulate an update on a GPU cluster with the real planner and a cost model calibrated on the original's published table.")
        {
            model, cluster, gpus, tp, method, design, inFlight, relays, json, trace, reproduce, perNode, free, maxBucket, h2d, nvlink, nics, nic,
        };
        command.SetAction(result =>
        {
            if (result.GetValue(reproduce))
            {
                var r = Reproduction.Run();
                if (result.GetValue(json))
                {
                    stdout.WriteLine(ReproductionJson(r));
                }
                else
                {
                    stdout.WriteLine("Simulation, not measurement: the original's published update times (MoonshotAI/checkpoint-engine README) against its simulated schedule.");
                    stdout.Write(r.ToMarkdown());
                }
                return 0;
            }
            var name = result.GetValue(model);
            if (name is null)
            {
                stderr.WriteLine("error: --model is required (or --reproduce)");
                return CkptEngineCli.BadInput;
            }
            var inventory = ModelPresets.Find(name)?.Inventory
                ?? (File.Exists(name) || Directory.Exists(name) ? ModelInventory.FromCheckpoint(name)
                    : throw new CheckpointEngineException($"--model {name}: neither a preset ({string.Join(", ", ModelPresets.All.Select(p => p.Name))}) nor a checkpoint path"));
            var spec = ClusterPresets.Find(result.GetValue(cluster)!)
                ?? throw new CheckpointEngineException($"--cluster {result.GetValue(cluster)}: unknown; presets: {string.Join(", ", ClusterPresets.All.Select(c => c.Name))}");
            spec = spec with
            {
                GpusPerNode = result.GetValue(perNode) ?? spec.GpusPerNode,
                FreeMemory = Size(result.GetValue(free), "--free-memory") ?? spec.FreeMemory,
                HostToDevice = result.GetValue(h2d) * 1e9 ?? spec.HostToDevice,
                NvLink = result.GetValue(nvlink) * 1e9 ?? spec.NvLink,
                NicsPerNode = result.GetValue(nics) ?? spec.NicsPerNode,
                NicBandwidth = result.GetValue(nic) * 1e9 ?? spec.NicBandwidth,
            };
            var scenario = new Scenario(inventory, spec, result.GetValue(gpus), result.GetValue(tp),
                Parse<SimulatedMethod>(result.GetValue(method)!, "--method"), Parse<SimulatedDesign>(result.GetValue(design)!, "--design"),
                MaxBucketSize: Size(result.GetValue(maxBucket), "--max-bucket-size") ?? Planning.BucketSizing.DefaultMaxBucketSize, InFlight: result.GetValue(inFlight),
                ClassRelays: result.GetValue(relays) switch { "on" => true, "off" => false, _ => null });
            var outcome = UpdateSimulator.Run(SimulationPlan.Build(scenario), CostParameters.Calibrated);
            if (result.GetValue(json))
            {
                stdout.WriteLine(ResultJson(outcome));
            }
            else
            {
                WriteText(stdout, outcome);
            }
            if (result.GetValue(trace) is { } path)
            {
                var shown = WriteTrace(outcome, path);
                stderr.WriteLine($"simulate: wrote {path} ({shown} of {spec.Nodes(scenario.Gpus)} nodes; draw it with: ckpt-engine trace render {path})");
            }
            return 0;
        });
        return command;
    }

    private static long? Size(string? text, string option) =>
        text is null ? null : ByteSize.TryParse(text, out var n) ? n : throw new CheckpointEngineException($"{option}: '{text}' is not a size (e.g. 4GiB)");

    private static T Parse<T>(string text, string option) where T : struct, Enum =>
        Enum.TryParse<T>(text.Replace("-", "", StringComparison.Ordinal), ignoreCase: true, out var v) && Enum.IsDefined(v)
            ? v
            : throw new CheckpointEngineException($"{option} {text}: expected one of {string.Join(", ", Enum.GetNames<T>().Select(Kebab))}");

    /// <summary>ShardAwareBroadcast as shard-aware-broadcast, P2P as p2p: a hyphen where a capital follows a small letter.</summary>
    private static string Kebab(string name) =>
        string.Concat(name.Select((c, i) => i > 0 && char.IsUpper(c) && char.IsLower(name[i - 1]) ? "-" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    private static void WriteText(TextWriter w, SimulationResult r)
    {
        var s = r.Plan.Scenario;
        var c = r.CriticalPath;
        FormattableString text = $"""
            simulated update (not a measurement): {s.Model.Name} on {s.Gpus}×{s.Cluster.Name.ToUpperInvariant()} ({s.Cluster.Nodes(s.Gpus)} nodes), TP{s.TensorParallel}, {Kebab(s.Method.ToString())}, design {Kebab(s.Design.ToString())}
              checkpoint {ByteSize.Format(s.Model.TotalBytes)} in {s.Model.Tensors.Count} tensors over {s.Gpus} owners; {r.Plan.GroupRanks} ranks receive
              buckets of {ByteSize.Format(r.Plan.BucketSize)} × {r.Plan.Slots} device buffers; {r.Plan.Buckets.Count} buckets in {r.Plan.Steps} steps
              time {r.Seconds:F2} s, bound by {r.DescribeBound()}
              critical path: staging {c.Staging:F2} s, NVLink {c.NvLink:F2} s, network {c.Network:F2} s, reload {c.Reload:F2} s, latency {c.Latency:F2} s
              busy: staging {r.StagingBusy:F2} s (busiest GPU), {(r.Plan.Routes is null ? "broadcast" : "moves (scatters and relays)")} {r.BroadcastBusy:F2} s, reload {r.ReloadBusy:F2} s{Routes(r.Plan)}
              cost model: {r.Costs.Parameters} (calibrated on the original's published rows: simulate --reproduce)
            """;
        w.WriteLine(text.ToString(CultureInfo.InvariantCulture));
    }

    /// <summary>The shard-aware routes and, beyond one bucket in flight, what the window costs in memory.</summary>
    private static string Routes(SimulationPlan p)
    {
        if (p.Routes is null)
        {
            return "";
        }
        var kinds = Enum.GetValues<RouteKind>().Select(k => $"{p.Routes.Count(r => r.Kind == k)} {Kebab(k.ToString())}");
        var window = p.Window <= 1 ? "" : p.ExtraMemory > 0 ? $"; {p.Window} buckets in flight: {ByteSize.Format(p.ExtraMemory)} more device memory per GPU"
            : $"; {p.Window} buckets in flight, in {p.Slots} buffers of {ByteSize.Format(p.BucketSize)}";
        return $"\n  routes: {string.Join(", ", kinds)}{window}";
    }

    private static string ResultJson(SimulationResult r)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            WriteResult(w, r);
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    private static void WriteResult(Utf8JsonWriter w, SimulationResult r)
    {
        var s = r.Plan.Scenario;
        w.WriteStartObject();
        w.WriteBoolean("simulation", true);
        w.WriteString("model", s.Model.Name);
        w.WriteNumber("checkpoint_bytes", s.Model.TotalBytes);
        w.WriteNumber("tensors", s.Model.Tensors.Count);
        w.WriteString("cluster", s.Cluster.Name);
        w.WriteNumber("gpus", s.Gpus);
        w.WriteNumber("nodes", s.Cluster.Nodes(s.Gpus));
        w.WriteNumber("tp", s.TensorParallel);
        w.WriteString("method", Kebab(s.Method.ToString()));
        w.WriteString("design", Kebab(s.Design.ToString()));
        w.WriteNumber("bucket_size", r.Plan.BucketSize);
        w.WriteNumber("slots", r.Plan.Slots);
        w.WriteNumber("buckets", r.Plan.Buckets.Count);
        w.WriteNumber("steps", r.Plan.Steps);
        w.WriteNumber("in_flight", r.Plan.Window);
        w.WriteNumber("extra_memory_per_gpu", r.Plan.ExtraMemory);
        if (r.Plan.Routes is { } routes)
        {
            w.WriteStartObject("routes");
            foreach (var kind in Enum.GetValues<RouteKind>())
            {
                w.WriteNumber(Kebab(kind.ToString()), routes.Count(x => x.Kind == kind));
            }
            w.WriteEndObject();
        }
        w.WriteNumber("seconds", Math.Round(r.Seconds, 4));
        w.WriteString("bound", Kebab(r.Bound.ToString()));
        w.WriteString("bound_by", r.DescribeBound());
        w.WriteStartObject("critical_path");
        foreach (var category in Enum.GetValues<CostCategory>())
        {
            w.WriteNumber(Kebab(category.ToString()), Math.Round(r.CriticalPath[category], 4));
        }
        w.WriteEndObject();
        w.WriteStartObject("busy");
        w.WriteNumber("staging_busiest_gpu", Math.Round(r.StagingBusy, 4));
        w.WriteNumber("broadcast", Math.Round(r.BroadcastBusy, 4));
        w.WriteNumber("reload", Math.Round(r.ReloadBusy, 4));
        w.WriteEndObject();
        WriteParameters(w, "cost_model", r.Costs.Parameters);
        w.WriteEndObject();
    }

    private static void WriteParameters(Utf8JsonWriter w, string name, CostParameters p)
    {
        w.WriteStartObject(name);
        w.WriteNumber("link_efficiency", Math.Round(p.LinkEfficiency, 4));
        w.WriteNumber("call_latency_s", Math.Round(p.CallLatency, 7));
        w.WriteNumber("reload_bytes_per_s", Math.Round(p.ReloadBandwidth));
        w.WriteNumber("rdma_efficiency", Math.Round(p.RdmaEfficiency, 4));
        w.WriteNumber("finish_overhead_s", Math.Round(p.FinishOverhead, 4));
        w.WriteEndObject();
    }

    private static string ReproductionJson(Reproduction r)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteBoolean("simulation", true);
            WriteParameters(w, "fitted", r.Fitted);
            w.WriteStartArray("rows");
            foreach (var row in r.Rows)
            {
                w.WriteStartObject();
                w.WriteString("row", row.Row.Label);
                w.WriteBoolean("held_out", row.Row.HeldOut);
                w.WriteNumber("published_s", row.Row.Seconds);
                w.WriteNumber("original_s", Math.Round(row.Predicted, 3));
                w.WriteNumber("error", Math.Round(row.Error, 4));
                w.WriteNumber("ours_s", Math.Round(row.Ours.Seconds, 3));
                w.WriteNumber("shard_aware_broadcast_s", Math.Round(row.ShardAwareBroadcast.Seconds, 3));
                w.WriteNumber("shard_aware_s", Math.Round(row.ShardAware.Seconds, 3));
                w.WriteString("ours_bound", Kebab(row.Ours.Bound.ToString()));
                w.WriteString("shard_aware_bound", Kebab(row.ShardAware.Bound.ToString()));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>
    /// The simulated timeline in the format of <c>update --trace</c>: a process per node (named by its first rank),
    /// the staging track showing its GPUs' copies or reads, broadcast and reload tracks for every bucket.
    /// </summary>
    internal static int WriteTrace(SimulationResult r, string path)
    {
        var s = r.Plan.Scenario;
        var nodes = Math.Min(MaxTraceNodes, s.Cluster.Nodes(r.Plan.GroupRanks));
        static TimeSpan T(double seconds) => TimeSpan.FromTicks((long)Math.Round(seconds * TimeSpan.TicksPerSecond));
        var ranks = new List<RankTimeline>();
        for (var node = 0; node < nodes; node++)
        {
            var stagedUntil = double.NegativeInfinity;
            var timings = new List<BucketTiming>(r.Buckets.Count);
            foreach (var b in r.Buckets)
            {
                // One bar per node: copies of several GPUs of the node at once show as the first of them.
                var staged = s.Cluster.NodeOf(b.Bucket.Stager) == node && b.StageStart >= stagedUntil && b.StageEnd > b.StageStart;
                if (staged)
                {
                    stagedUntil = b.StageEnd;
                }
                timings.Add(new BucketTiming(b.Bucket.Index, b.Bucket.Owner, b.Bucket.Bytes,
                    staged ? T(b.StageStart) : TimeSpan.Zero, staged ? T(b.StageEnd) : TimeSpan.Zero,
                    T(b.BroadcastStart), T(b.BroadcastEnd), T(b.ReloadStart), T(b.ReloadEnd)));
            }
            ranks.Add(new RankTimeline(node * s.Cluster.GpusPerNode, DateTimeOffset.UnixEpoch, T(r.Seconds), timings));
        }
        ChromeTraceWriter.WriteFile(new UpdateTrace($"{s.Model.Name} (simulated, {s.Gpus}×{s.Cluster.Name}, {Kebab(s.Design.ToString())})",
            s.Method == SimulatedMethod.P2P ? "p2p" : "broadcast", ranks), path);
        return nodes;
    }
}
