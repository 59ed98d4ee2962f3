using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using CheckpointEngine.Hosting;
using CheckpointEngine.Hosting.Api;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Runtime.Rendezvous;
using CheckpointEngine.Server;

namespace CheckpointEngine.Cli.Commands;

/// <summary>
/// <c>ckpt-engine serve (--uds PATH | --listen HOST:PORT) [--allow-remote]</c>: one parameter-server rank
/// (joined from the torchrun variables) with the HTTP API, until Ctrl-C or SIGTERM.
/// </summary>
internal static class ServeCommand
{
    public static Command Create(TextWriter stdout)
    {
        var uds = new Option<string?>("--uds") { Description = "Unix socket to serve HTTP on (created owner-only, 0600); {rank} in it becomes the rank" };
        var listen = new Option<string?>("--listen") { Description = "HOST:PORT to serve HTTP on (loopback only unless --allow-remote; port 0 picks a free one)" };
        var allowRemote = new Option<bool>("--allow-remote") { Description = "allow --listen on a non-loopback address (set CKPT_ENGINE_TOKEN too)" };
        var allowDir = new Option<string[]>("--allow-dir")
        {
            Description = $"register files only inside this directory (repeatable; links and .. cannot lead out; default: {RankConfig.AllowDirsVariable}, colon-separated, else any readable file)",
            AllowMultipleArgumentsPerToken = false,
        };
        var allowEngineHost = new Option<string[]>("--allow-engine-host")
        {
            Description = $"a host an update's update_url may name besides loopback (repeatable; * for any; default: {RankConfig.AllowEngineHostsVariable}, comma-separated)",
        };
        var allowEngineSocket = new Option<string[]>("--allow-engine-socket")
        {
            Description = $"a Unix socket an update's uds may name though another user owns it (repeatable; default: {RankConfig.AllowEngineSocketsVariable}, colon-separated)",
        };
        var budget = new Option<string?>("--registration-budget")
        {
            Description = $"most host memory registered checkpoints may hold, e.g. 64GiB (default: {RankConfig.RegistrationBudgetVariable} in GiB, else 90% of the machine's memory over the ranks on this host)",
        };
        budget.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<string?>() is { } text && !ByteSize.TryParse(text, out _))
            {
                r.AddError($"--registration-budget: '{text}' is not a size like 64GiB, 512MiB or 1000000000");
            }
        });
        var device = DeviceOption.Create();
        var allowNoToken = AllowNoTokenOption.Create();
        var transport = P2PTransportOption.Create();
        listen.Validators.Add(r =>
        {
            if (!WorkerCommand.TryParseListen(r.GetValueOrDefault<string?>(), out _, out _, out var why))
            {
                r.AddError($"--listen: {why}");
            }
        });
        uds.Validators.Add(r => { if (string.IsNullOrWhiteSpace(r.GetValueOrDefault<string?>())) r.AddError("--uds: the socket path is empty"); });
        var command = new Command("serve", "Run one parameter-server rank (torchrun env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) with the HTTP API.")
        {
            uds, listen, allowRemote, allowDir, allowEngineHost, allowEngineSocket, budget, device, allowNoToken, transport,
        };
        command.Validators.Add(r =>
        {
            var given = (r.GetResult(uds) is not null ? 1 : 0) + (r.GetResult(listen) is not null ? 1 : 0);
            if (given != 1)
            {
                r.AddError(given == 0 ? "give --uds PATH or --listen HOST:PORT" : "give either --uds or --listen, not both");
            }
            else if (r.GetResult(uds) is not null && r.GetResult(allowRemote) is not null)
            {
                r.AddError("--allow-remote applies to --listen only");
            }
        });
        command.SetAction(async (result, ct) =>
        {
            var config = P2PTransportOption.Apply(AllowNoTokenOption.Config(result.GetValue(allowNoToken)), result.GetValue(transport));
            // "{rank}" in the path gives each rank of a launch its own socket.
            var socket = result.GetValue(uds)?.Replace("{rank}", config.Rank.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal);
            // A flag replaces its variable.
            static IReadOnlyList<string> Either(string[]? flag, IReadOnlyList<string> variable) => flag is { Length: > 0 } ? flag : variable;
            var options = new ApiOptions
            {
                UnixSocket = socket,
                AllowRemote = result.GetValue(allowRemote),
                Token = config.Token,
                AllowedDirectories = Either(result.GetValue(allowDir), config.AllowDirs),
                AllowedEngineHosts = Either(result.GetValue(allowEngineHost), config.AllowEngineHosts),
                AllowedEngineSockets = Either(result.GetValue(allowEngineSocket), config.AllowEngineSockets),
                OtlpEndpoint = OtlpEndpoint(),
            };
            if (result.GetValue(budget) is { } text && ByteSize.TryParse(text, out var bytes))
            {
                config = config with { RegistrationBudget = bytes };
            }
            if (options.AllowedDirectories.Count > 0)
            {
                _ = new Checkpoints.AllowedDirectories(options.AllowedDirectories); // Refuse a missing directory before joining the world.
            }
            if (result.GetValue(listen) is { } address)
            {
                _ = WorkerCommand.TryParseListen(address, out var host, out var port, out _);
                _ = ApiServer.ResolveListenHost(host, options.AllowRemote); // Refuse a remote address before joining the world.
                options = options with { Host = host, Port = port };
                if (options.AllowRemote && options.Token is null)
                {
                    stdout.WriteLine($"warning: serving without {RankConfig.TokenVariable}: anyone who reaches {address} can make this rank read files and run updates");
                }
            }
            // Our own handlers: a synchronous Invoke does not turn SIGTERM into cancellation by itself.
            using var stop = new StopSignal(ct);
            RankHost rank;
            try
            {
                rank = await RankHost.StartAsync(config, result.GetValue(device), TimeSpan.FromSeconds(300), stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stop.Token.IsCancellationRequested)
            {
                stdout.WriteLine("stopped");
                return 0;
            }
            catch (Exception e) when (e is RendezvousException or SocketException)
            {
                throw new RendezvousException($"rank {config.Rank} could not join the world ({config}): {e.Message}", e); // Reported as "error: ..." by the CLI.
            }
            await using (rank.ConfigureAwait(false))
            {
                var api = await ApiServer.StartAsync(rank.Server, options, new LineLogger(stdout), stop.Token).ConfigureAwait(false);
                await using (api.ConfigureAwait(false))
                {
                    stdout.WriteLine($"serving rank {rank.World.Rank} on {api.Address}");
                    stdout.Flush();
                    await stop.WaitAsync().ConfigureAwait(false); // Until Ctrl-C or SIGTERM; then everything is disposed in order.
                }
            }
            stdout.WriteLine("stopped");
            return 0;
        });
        return command;
    }

    /// <summary>OpenTelemetry's standard variable; a value that is not an absolute URL is refused up front.</summary>
    private static Uri? OtlpEndpoint()
    {
        const string variable = "OTEL_EXPORTER_OTLP_ENDPOINT";
        var value = Environment.GetEnvironmentVariable(variable);
        return string.IsNullOrWhiteSpace(value) ? null
            : Uri.TryCreate(value, UriKind.Absolute, out var uri) ? uri
            : throw new CheckpointEngineException($"{variable}='{value}' is not an absolute URL (e.g. http://127.0.0.1:4317)");
    }
}
