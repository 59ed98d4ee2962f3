namespace CheckpointEngine.Worker;

/// <summary>
/// Device identity: how a parameter-server rank and the inference worker on the same accelerator
/// find each other. GPUs use "GPU-&lt;uuid&gt;"; the host backend uses "host-&lt;machine&gt;-&lt;local rank&gt;"
/// unless an override is configured (<c>CKPT_ENGINE_DEVICE_ID</c>). A launcher gives every rank the
/// same environment, so the override may contain <c>{local_rank}</c> (and <c>{rank}</c>), replaced per rank.
/// </summary>
public static class DeviceIds
{

    /// <summary>The default host-backend id of the device of local rank <paramref name="localRank"/> on this machine.</summary>
    public static string Host(int localRank) => $"host-{Environment.MachineName}-{localRank}";

    /// <summary>An override with its placeholders filled in for one rank.</summary>
    public static string Fill(string template, int localRank, int rank) =>
        template.Replace("{local_rank}", localRank.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
            .Replace("{rank}", rank.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
}
