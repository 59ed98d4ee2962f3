using System.Net;
using CheckpointEngine.Interop.Ucx;

namespace CheckpointEngine.Runtime.P2P;

/// <summary>How P2P reads move bytes: <c>tcp</c> (the built-in store), <c>ucx</c> (one-sided reads), or <c>auto</c> (UCX when it loads and an RDMA device is present, else TCP).</summary>
public enum P2PTransport
{
    Auto,
    Tcp,
    Ucx,
}

/// <summary>Choosing and creating a rank's P2P store (the composition root's part).</summary>
public static class P2PTransports
{
    public const string Variable = "CKPT_ENGINE_P2P_TRANSPORT";

    /// <summary>UCX's transports when <c>UCX_TLS</c> is not set: all but <c>tcp</c>, whose emulated one-sided reads do not check remote keys.</summary>
    public const string DefaultUcxTransports = "^tcp";

    /// <exception cref="CheckpointEngineException">Not tcp, ucx or auto; the message names <paramref name="source"/>.</exception>
    public static P2PTransport Parse(string? text, string source) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "auto" => P2PTransport.Auto,
        "tcp" => P2PTransport.Tcp,
        "ucx" => P2PTransport.Ucx,
        var other => throw new CheckpointEngineException($"{source}={other} is not a P2P transport: use tcp, ucx or auto"),
    };

    public static string Name(this P2PTransport transport) => transport.ToString().ToLowerInvariant();

    /// <summary>The store a rank of <paramref name="config"/> serves and reads with, at <paramref name="address"/>; its RDMA devices picked from this host's sysfs.</summary>
    public static IP2PStore Create(RankConfig config, IPAddress address)
    {
        var rdma = RdmaDevices.Parse(config.RdmaDevices?.Spec, RdmaDevices.Available(), config.RdmaDevices?.Source ?? RdmaDevices.Variable);
        return Create(config.P2PTransport, address, config.Token, RdmaDevices.ForRank(rdma, config.LocalRank, config.LocalWorldSize), config.UcxTlsSet);
    }

    /// <summary>
    /// The store for <paramref name="transport"/> (auto resolved here). UCX gets its device settings:
    /// <c>NET_DEVICES</c> from this rank's RDMA devices, and <c>TLS</c> unless the environment sets <c>UCX_TLS</c>.
    /// </summary>
    /// <exception cref="Interop.BackendUnavailableException">ucx was asked for and UCX is not installed.</exception>
    public static IP2PStore Create(P2PTransport transport, IPAddress address, string? token, IReadOnlyList<RdmaDevice> rdma, bool ucxTlsSet)
    {
        if (transport == P2PTransport.Auto)
        {
            transport = rdma.Count > 0 && Ucx.TryLoad(out _) ? P2PTransport.Ucx : P2PTransport.Tcp;
        }
        if (transport == P2PTransport.Tcp)
        {
            return new TcpP2PStore(address, token);
        }
        var settings = new Dictionary<string, string>();
        if (rdma.Count > 0)
        {
            settings["NET_DEVICES"] = RdmaDevices.ToUcxNetDevices(rdma);
        }
        if (!ucxTlsSet)
        {
            settings["TLS"] = DefaultUcxTransports;
        }
        return new UcxP2PStore(address, token, settings, peerErrors: rdma.Count > 0 || ucxTlsSet, sameHostOnly: rdma.Count == 0 && !ucxTlsSet);
    }
}
