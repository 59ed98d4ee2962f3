namespace CheckpointEngine.Hosting.Launch;

/// <summary>What <see cref="Launcher"/> starts: <see cref="NProc"/> copies of <see cref="Command"/> on this host.</summary>
public sealed record LaunchOptions
{
    public const string DefaultMasterAddr = "127.0.0.1";

    /// <summary>Ranks to start (<c>WORLD_SIZE</c> and <c>LOCAL_WORLD_SIZE</c>).</summary>
    public int NProc { get; init; } = 1;

    /// <summary><c>MASTER_ADDR</c>: where rank 0 serves the rendezvous store.</summary>
    public string MasterAddr { get; init; } = DefaultMasterAddr;

    /// <summary><c>MASTER_PORT</c>; 0 picks a free one by binding port 0 on <see cref="MasterAddr"/>.</summary>
    public int MasterPort { get; init; }

    /// <summary>
    /// The program and its arguments, run as given: a path, or a name looked up the way
    /// <see cref="System.Diagnostics.ProcessStartInfo"/> does. <see cref="Launcher.SelfCommand"/> builds one
    /// that runs this ckpt-engine.
    /// </summary>
    public required IReadOnlyList<string> Command { get; init; }

    /// <summary>Variables for every rank on top of the inherited environment; a null value removes one.</summary>
    public IReadOnlyDictionary<string, string?>? Environment { get; init; }

    /// <summary>Variables for one rank (called with the rank), applied last: they may override anything.</summary>
    public Func<int, IReadOnlyDictionary<string, string?>?>? RankEnvironment { get; init; }

    /// <summary><c>CKPT_ENGINE_TOKEN</c> for every rank; null leaves the inherited one (if any).</summary>
    public string? Token { get; init; }

    /// <summary>How long stopped ranks get between SIGTERM and SIGKILL.</summary>
    public TimeSpan StopGrace { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The ranks' working directory; null inherits this process's.</summary>
    public string? WorkingDirectory { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first bad setting.</summary>
    internal void Validate()
    {
        if (NProc < 1)
        {
            throw new CheckpointEngineException($"NProc must be at least 1 (got {NProc})");
        }
        if (Command is not { Count: > 0 } || string.IsNullOrEmpty(Command[0]))
        {
            throw new CheckpointEngineException("Command is empty: name the program to run on every rank");
        }
        if (string.IsNullOrWhiteSpace(MasterAddr))
        {
            throw new CheckpointEngineException("MasterAddr is empty");
        }
        if (MasterPort is < 0 or > 65535)
        {
            throw new CheckpointEngineException($"MasterPort {MasterPort} is outside [0, 65535]");
        }
        if (StopGrace < TimeSpan.Zero)
        {
            throw new CheckpointEngineException($"StopGrace must not be negative (got {StopGrace})");
        }
    }
}
