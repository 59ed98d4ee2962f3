using System.CommandLine;
using CheckpointEngine.Runtime;

namespace CheckpointEngine.Cli.Commands;

/// <summary>The <c>--allow-no-token</c> option of the commands that join a world from the environment (<c>serve</c>, <c>update</c>).</summary>
internal static class AllowNoTokenOption
{
    public static Option<bool> Create() => new("--allow-no-token")
    {
        Description = $"join a world reachable from other hosts (MASTER_ADDR off loopback) without {RankConfig.TokenVariable}: anyone on the network " +
            $"can then join it and read its weights (same as {RankConfig.AllowNoTokenVariable}=1)",
    };

    /// <summary>The rank's configuration from the environment, with the flag on top.</summary>
    public static RankConfig Config(bool allowNoToken)
    {
        var config = RankConfig.FromEnvironment();
        return allowNoToken ? config with { AllowNoToken = true } : config;
    }
}
