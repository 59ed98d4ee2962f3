using System.Net;
using CheckpointEngine.Runtime.P2P;

namespace CheckpointEngine.Tests.Support;

/// <summary>Both P2P transports for tests that run once per transport; the UCX cases fail naming the package where UCX is missing (CI installs it).</summary>
internal static class P2PStores
{
    public const string Tcp = "tcp";
    public const string Ucx = "ucx";

    /// <summary>Every transport, for <c>[MemberData]</c>.</summary>
    public static TheoryData<string> Transports => [Tcp, Ucx];

    /// <summary>A store of <paramref name="transport"/> on loopback, with the settings a rank uses by default.</summary>
    public static IP2PStore Create(string transport, string? token)
    {
        if (transport == Tcp)
        {
            return new TcpP2PStore(IPAddress.Loopback, token);
        }
        RequireUcx();
        return new UcxP2PStore(IPAddress.Loopback, token, new Dictionary<string, string> { ["TLS"] = P2PTransports.DefaultUcxTransports });
    }

    /// <exception cref="InvalidOperationException">UCX does not load here: names the package to install.</exception>
    public static void RequireUcx()
    {
        if (!CheckpointEngine.Interop.Ucx.Ucx.TryLoad(out var why))
        {
            throw new InvalidOperationException($"the UCX P2P cases need UCX ({why}); install libucx0 (apt-get install -y --no-install-recommends libucx0; .ci/run does it)");
        }
    }
}
