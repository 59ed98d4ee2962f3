namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// What <c>ckpt-engine soak</c> runs: <see cref="Rounds"/> rounds of an RL loop against <see cref="Ranks"/> serve
/// processes and a reference worker, and over which rounds the memory slope is fitted.
/// </summary>
/// <param name="FitFrom">The first round of the fit (1-based); the earlier ones are warm-up (JIT, pools, GC heap sizing).</param>
/// <param name="MaxSlope">Fail (exit 1) when a process grows faster than this many KiB per round; null only reports.</param>
/// <param name="Layers">Transformer layers of the sample checkpoint (about a dozen tensors each): what per-name state costs grows with the tensor count.</param>
internal sealed record SoakSettings(int Ranks = SoakSettings.DefaultRanks, int Rounds = SoakSettings.DefaultRounds, int FitFrom = SoakSettings.DefaultFitFrom,
    double? MaxSlope = null, double RoundTimeoutSeconds = SoakSettings.DefaultRoundTimeoutSeconds, int? Layers = null)
{
    public const int DefaultRanks = 2;
    public const int DefaultRounds = 150;
    public const int DefaultFitFrom = 11;
    public const int MaxRanks = 16;
    public const int MaxRounds = 100_000;
    public const double DefaultRoundTimeoutSeconds = 60;

    /// <summary>The checkpoint every round registers: small, so a round costs milliseconds of copying and the soak measures what stays behind.</summary>
    public const long CheckpointBytes = 1L << 16;

    public const int MaxLayers = 1024;

    /// <summary>At least one layer per rank, so every rank registers a file of its own.</summary>
    public int LayerCount => Layers ?? 2 * Ranks;

    /// <summary>The rounds the slope is fitted over: from <see cref="FitFrom"/>, or every round when that leaves fewer than two.</summary>
    public (int First, int Last) FitRange => Rounds - FitFrom >= 1 ? (FitFrom, Rounds) : (1, Rounds);

    /// <summary>The checkpoint name of round <paramref name="round"/>, as an RL loop names its steps.</summary>
    public static string StepName(int round) => $"step{round}";
}
