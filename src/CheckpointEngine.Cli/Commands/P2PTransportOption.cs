using System.CommandLine;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.P2P;

namespace CheckpointEngine.Cli.Commands;

/// <summary>The <c>--p2p-transport tcp|ucx|auto</c> option of the commands that run ranks (update, serve, demo, bench).</summary>
internal static class P2PTransportOption
{
    public static Option<string?> Create()
    {
        var option = new Option<string?>("--p2p-transport")
        {
            Description = $"how P2P reads move bytes: tcp, ucx (one-sided reads over RDMA or shared memory; needs libucx0) or auto (ucx when UCX loads and an RDMA device is present, else tcp; default: {P2PTransports.Variable}, else auto)",
        };
        option.AcceptOnlyFromAmong("tcp", "ucx", "auto");
        return option;
    }

    /// <summary>The rank's configuration with the option on top (when given).</summary>
    public static RankConfig Apply(RankConfig config, string? option) =>
        option is null ? config : config with { P2PTransport = P2PTransports.Parse(option, "--p2p-transport") };

    /// <summary>What launched ranks get so that they use the option too (nothing when it was not given).</summary>
    public static IEnumerable<KeyValuePair<string, string?>> RankVariables(string? option) =>
        option is null ? [] : [new(P2PTransports.Variable, option)];
}
