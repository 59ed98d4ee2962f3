using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
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
        var device = DeviceOption.Create();
        var allowNoToken = AllowNoTokenOption.Create();
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
            uds, listen, allowRemote, device, allowNoToken,
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
            var config = AllowNoTokenOption.Config(result.GetValue(allowNoToken));
            // "{rank}" in the path gives each rank of a launch its own socket.
            var socket = result.GetValue(uds)?.Replace("{rank}", config.Rank.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal);
            var options = new ApiOptions { UnixSocket = socket, AllowRemote = result.GetValue(allowRemote), Token = config.Token };
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
                var api = await ApiServer.StartAsync(rank.Server, options, stdout, stop.Token).ConfigureAwait(false);
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
}
