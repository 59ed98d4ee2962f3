namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// Device identity: how a parameter-server rank and the inference worker on the same accelerator
/// find each other. GPUs use "GPU-&lt;uuid&gt;"; the host backend uses "host-&lt;machine&gt;-&lt;local rank&gt;"
/// unless <c>CKPT_ENGINE_DEVICE_ID</c> overrides it for this process. A launcher gives every rank the
/// same environment, so the override may contain <c>{local_rank}</c> (and <c>{rank}</c>), replaced per rank.
/// </summary>
public static class DeviceIds
{
    public const string Variable = "CKPT_ENGINE_DEVICE_ID";

    /// <summary>The default host-backend id of the device of local rank <paramref name="localRank"/> on this machine.</summary>
    public static string Host(int localRank) => $"host-{Environment.MachineName}-{localRank}";

    /// <summary>This process's device id: the override if set (placeholders filled in), else <see cref="Host"/>.</summary>
    public static string ForRank(int localRank, int? rank = null) =>
        Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } id
            ? id.Replace("{local_rank}", localRank.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
                .Replace("{rank}", (rank ?? localRank).ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
            : Host(localRank);
}
