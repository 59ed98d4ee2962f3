using System.CommandLine;
using System.Globalization;
using CheckpointEngine.ReferenceEngine;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine worker --listen HOST:PORT --tp N [--device-ids ...] [--shard-by-tp [--packed-parts]] [--fail-at-bucket K [--fail-at-update N]] [--corrupt-tensor NAME]</c>:
/// runs the reference inference worker until Ctrl-C or SIGTERM.
/// </summary>
internal static class WorkerCommand
{
    private const int DefaultTp = 1;

    public static Command Create(TextWriter stdout)
    {
        var listen = new Option<string>("--listen") { Description = "HOST:PORT to serve HTTP on (loopback only unless --allow-remote; port 0 picks a free one)", Required = true };
        var allowRemote = new Option<bool>("--allow-remote") { Description = "allow --listen on a non-loopback address" };
        var tp = new Option<int>("--tp") { Description = "tensor-parallel shards, one per device", DefaultValueFactory = _ => DefaultTp };
        var deviceIds = new Option<string?>("--device-ids") { Description = "comma-separated device id of each shard (default: host-<machine>-<i>)" };
        var shardByTp = new Option<bool>("--shard-by-tp") { Description = "each shard keeps only its tensor-parallel slice of projection weights" };
        var packed = new Option<bool>("--packed-parts") { Description = "take declared parts packed by the rank, never in place row by row (as an older worker)" };
        var failAt = new Option<int?>("--fail-at-bucket") { Description = "fail an update at this bucket (fault injection; the first update, or --fail-at-update)" };
        var failUpdate = new Option<int>("--fail-at-update") { Description = "which update --fail-at-bucket fails, counted from 1", DefaultValueFactory = _ => 1 };
        failUpdate.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--fail-at-update must be at least 1"); });
        var corrupt = new Option<string?>("--corrupt-tensor") { Description = "flip a bit of this tensor where it arrives, before it is checked and loaded (fault injection)" };
        corrupt.Validators.Add(r => { if (r.GetValueOrDefault<string?>() is { } n && string.IsNullOrWhiteSpace(n)) r.AddError("--corrupt-tensor needs a tensor name"); });
        var delay = new Option<int>("--reload-delay-ms") { Description = "extra milliseconds each bucket's reload takes (a slow engine)" };
        delay.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 0) r.AddError("--reload-delay-ms must not be negative"); });
        var idle = new Option<double>("--idle-timeout")
        {
            Description = "seconds a shard waits for the parameter server's next message",
            DefaultValueFactory = _ => new ReferenceWorkerOptions().IdleTimeout.TotalSeconds,
        };
        listen.Validators.Add(r =>
        {
            if (!TryParseListen(r.GetValueOrDefault<string>(), out _, out _, out var why))
            {
                r.AddError($"--listen: {why}");
            }
        });
        tp.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError("--tp must be at least 1"); });
        failAt.Validators.Add(r => { if (r.GetValueOrDefault<int?>() < 0) r.AddError("--fail-at-bucket must not be negative"); });
        idle.Validators.Add(r => { if (!(r.GetValueOrDefault<double>() > 0)) r.AddError("--idle-timeout must be a positive number of seconds"); });
        var command = new Command("worker", "Run the reference inference worker (a stand-in for a vLLM server with N tensor-parallel shards).")
        {
            listen, allowRemote, tp, deviceIds, shardByTp, packed, failAt, failUpdate, corrupt, delay, idle,
        };
        command.Validators.Add(r =>
        {
            // Defaults are not applied yet while a command validates: an absent --tp is its default.
            var shards = r.GetResult(tp) is null ? DefaultTp : r.GetValue(tp);
            if (r.GetValue(deviceIds) is { } ids && SplitIds(ids).Count != shards)
            {
                r.AddError($"--device-ids names {SplitIds(ids).Count} device(s) but --tp is {shards}");
            }
        });
        command.SetAction(async (result, ct) =>
        {
            _ = TryParseListen(result.GetValue(listen), out var host, out var port, out _);
            var options = new ReferenceWorkerOptions
            {
                Host = host,
                Port = port,
                AllowRemote = result.GetValue(allowRemote),
                TensorParallel = result.GetValue(tp),
                DeviceIds = result.GetValue(deviceIds) is { } ids ? SplitIds(ids) : null,
                ShardByTp = result.GetValue(shardByTp),
                StridedParts = !result.GetValue(packed),
                FailAtBucket = result.GetValue(failAt),
                FailAtUpdate = result.GetValue(failUpdate),
                CorruptTensor = result.GetValue(corrupt),
                ReloadDelay = TimeSpan.FromMilliseconds(result.GetValue(delay)),
                IdleTimeout = TimeSpan.FromSeconds(result.GetValue(idle)),
            };
            // Our own handlers: a synchronous Invoke does not turn SIGTERM into cancellation by itself.
            using var stop = new StopSignal(ct);
            var worker = await ReferenceWorker.StartAsync(options, stdout, stop.Token).ConfigureAwait(false);
            await using (worker.ConfigureAwait(false))
            {
                stdout.WriteLine($"listening on {worker.Address.GetLeftPart(UriPartial.Authority)}");
                stdout.Flush();
                await stop.WaitAsync().ConfigureAwait(false); // Until Ctrl-C or SIGTERM; then everything is disposed in order.
            }
            stdout.WriteLine("stopped");
            return 0;
        });
        return command;
    }

    /// <summary>Splits "HOST:PORT" ("[::1]:8000" for IPv6).</summary>
    internal static bool TryParseListen(string? text, out string host, out int port, out string why)
    {
        host = "";
        port = 0;
        var colon = text?.LastIndexOf(':') ?? -1;
        if (text is null || colon <= 0)
        {
            why = $"'{text}' is not HOST:PORT";
            return false;
        }
        host = text[..colon];
        if (host.Contains(':', StringComparison.Ordinal) && !(host.StartsWith('[') && host.EndsWith(']')))
        {
            why = $"'{text}': write an IPv6 host in brackets, e.g. [::1]:8000";
            return false;
        }
        if (!int.TryParse(text[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out port) || port > 65535)
        {
            why = $"'{text}': the port must be a number in [0, 65535]";
            return false;
        }
        why = "";
        return true;
    }

    private static List<string> SplitIds(string ids) => [.. ids.Split(',', StringSplitOptions.TrimEntries)];
}
