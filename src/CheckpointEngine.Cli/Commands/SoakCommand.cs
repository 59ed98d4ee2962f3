using System.CommandLine;
using CheckpointEngine.Cli.Bench;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine soak [--ranks N] [--rounds N] [--fit-from K] [--layers N] [--max-slope KIB] [--json]</c>: a long RL loop over the
/// HTTP API against real serve and worker processes, reporting how fast each one's memory grows per round
/// (see <see cref="SoakRunner"/>).
/// </summary>
internal static class SoakCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var ranks = new Option<int>("--ranks") { Description = "serve rank processes (the reference worker gets as many shards)", DefaultValueFactory = _ => SoakSettings.DefaultRanks };
        var rounds = new Option<int>("--rounds") { Description = "rounds: register step k, gather its metas, update the worker, unregister step k-1", DefaultValueFactory = _ => SoakSettings.DefaultRounds };
        var fitFrom = new Option<int>("--fit-from") { Description = "first round of the slope's fit (earlier rounds are warm-up)", DefaultValueFactory = _ => SoakSettings.DefaultFitFrom };
        var maxSlope = new Option<double?>("--max-slope") { Description = "exit 1 when a process grows faster than this many KiB per round" };
        var layers = new Option<int?>("--layers") { Description = "layers of the sample checkpoint (about 12 tensors each; default: 2 per rank): per-name state grows with the tensor count" };
        layers.Validators.Add(r => { if (r.GetValueOrDefault<int?>() is { } l && (l < 1 || l > SoakSettings.MaxLayers)) r.AddError($"--layers must be in [1, {SoakSettings.MaxLayers}]"); });
        var json = new Option<bool>("--json") { Description = "print one JSON document (with every round's RSS) instead of the table" };
        ranks.Validators.Add(r => { if (r.GetValueOrDefault<int>() is < 1 or > SoakSettings.MaxRanks) r.AddError($"--ranks must be in [1, {SoakSettings.MaxRanks}]"); });
        rounds.Validators.Add(r => { if (r.GetValueOrDefault<int>() is < 2 or > SoakSettings.MaxRounds) r.AddError($"--rounds must be in [2, {SoakSettings.MaxRounds}]"); });
        fitFrom.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--fit-from must be at least 1"); });
        maxSlope.Validators.Add(r => { if (r.GetValueOrDefault<double?>() is { } m && !(m >= 0)) r.AddError("--max-slope must be a number of KiB per round, at least 0"); });
        var command = new Command("soak", "Run many rounds of an RL loop (register step k, update, unregister step k-1) over the HTTP API against serve and worker processes; report each process's memory growth per round.")
        {
            ranks, rounds, fitFrom, layers, maxSlope, json,
        };
        command.Validators.Add(r =>
        {
            var n = r.GetResult(ranks) is null ? SoakSettings.DefaultRanks : r.GetValue(ranks);
            if (r.GetValue(layers) is { } l && l < n)
            {
                r.AddError($"--layers {l} is fewer than --ranks {n}: every rank registers at least one layer's file");
            }
        });
        command.SetAction(async (result, ct) =>
        {
            var settings = new SoakSettings(result.GetValue(ranks), result.GetValue(rounds), result.GetValue(fitFrom), result.GetValue(maxSlope), Layers: result.GetValue(layers));
            var report = await SoakRunner.RunAsync(settings, stderr, ct).ConfigureAwait(false);
            if (result.GetValue(json))
            {
                stdout.WriteLine(report.ToJson());
            }
            else
            {
                report.WriteText(stdout);
            }
            if (report.OverLimit.Count > 0)
            {
                stderr.WriteLine($"soak: {string.Join(", ", report.OverLimit.Select(p => p.Name))} grew faster than --max-slope {settings.MaxSlope} KiB/round");
                return CkptEngineCli.BadInput;
            }
            return 0;
        });
        return command;
    }
}
