using System.Collections;
using System.Globalization;

namespace CheckpointEngine.Runtime;

/// <summary>
/// Who this process is among the parameter-server ranks, in torchrun's convention: <c>RANK</c>,
/// <c>WORLD_SIZE</c>, <c>MASTER_ADDR</c>, <c>MASTER_PORT</c>, optionally <c>LOCAL_RANK</c> and
/// <c>LOCAL_WORLD_SIZE</c>, plus <c>CKPT_ENGINE_TOKEN</c>, a shared secret every connection presents.
/// </summary>
public sealed record RankConfig
{
    public const string TokenVariable = "CKPT_ENGINE_TOKEN";
    public const string ConnectTimeoutVariable = "CKPT_ENGINE_CONNECT_TIMEOUT_S";

    public int Rank { get; init; }

    public int WorldSize { get; init; } = 1;

    public string MasterAddr { get; init; } = "127.0.0.1";

    /// <summary>Port of the rendezvous store on rank 0; 0 lets a single-rank world pick any free port.</summary>
    public int MasterPort { get; init; }

    public int LocalRank { get; init; }

    public int LocalWorldSize { get; init; } = 1;

    public string? Token { get; init; }

    /// <summary>How long to wait for the store and for every rank to join (<c>CKPT_ENGINE_CONNECT_TIMEOUT_S</c>, default 60 s).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Reads the torchrun variables from <paramref name="environment"/> (the process environment by
    /// default). Unset variables default to a single-rank world on loopback; set ones must be valid.
    /// </summary>
    public static RankConfig FromEnvironment(IDictionary? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariables();
        // Blank counts as unset (a shell's `export RANK=` must not read as an empty number).
        string? Get(string name) => Convert.ToString(environment[name], CultureInfo.InvariantCulture)?.Trim() is { Length: > 0 } v ? v : null;
        int Int(string name, int fallback, int min, int max, string? why = null)
        {
            var text = Get(name);
            if (text is null)
            {
                return fallback;
            }
            if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var v))
            {
                throw new ArgumentException($"{name}={text} is not a whole number in [{min}, {max}]");
            }
            if (v < min || v > max)
            {
                throw new ArgumentException($"{name}={text} is outside [{min}, {max}]{why}");
            }
            return v;
        }

        var world = Int("WORLD_SIZE", 1, 1, 1 << 20);
        var rank = Int("RANK", 0, 0, world - 1, $" (must be below WORLD_SIZE={world})");
        if (world > 1 && Get("MASTER_PORT") is null)
        {
            throw new ArgumentException($"MASTER_PORT is not set; WORLD_SIZE={world} needs rank 0's rendezvous port");
        }
        var config = new RankConfig
        {
            Rank = rank,
            WorldSize = world,
            MasterAddr = Get("MASTER_ADDR") ?? "127.0.0.1",
            MasterPort = Int("MASTER_PORT", 0, world > 1 ? 1 : 0, 65535),
            LocalWorldSize = Int("LOCAL_WORLD_SIZE", world, 1, world, $" (cannot exceed WORLD_SIZE={world})"),
            Token = Get(TokenVariable),
            ConnectTimeout = TimeSpan.FromSeconds(Int(ConnectTimeoutVariable, 60, 1, 86_400)),
        };
        return config with { LocalRank = Int("LOCAL_RANK", rank % config.LocalWorldSize, 0, config.LocalWorldSize - 1, $" (must be below LOCAL_WORLD_SIZE={config.LocalWorldSize})") };
    }

    public override string ToString() => $"rank {Rank}/{WorldSize} (local {LocalRank}/{LocalWorldSize}), store {MasterAddr}:{MasterPort}";
}
