namespace CheckpointEngine.Runtime.Devices;

/// <summary>
/// Device identity: how a parameter-server rank and the inference worker on the same accelerator
/// find each other. GPUs use "GPU-&lt;uuid&gt;"; the host backend uses "host-&lt;machine&gt;-&lt;local rank&gt;"
/// unless <c>CKPT_ENGINE_DEVICE_ID</c> overrides it for this process.
/// </summary>
public static class DeviceIds
{
    public const string Variable = "CKPT_ENGINE_DEVICE_ID";

    /// <summary>The default host-backend id of the device of local rank <paramref name="localRank"/> on this machine.</summary>
    public static string Host(int localRank) => $"host-{Environment.MachineName}-{localRank}";

    /// <summary>This process's device id: the override if set, else <see cref="Host"/>.</summary>
    public static string ForRank(int localRank) =>
        Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } id ? id : Host(localRank);
}
