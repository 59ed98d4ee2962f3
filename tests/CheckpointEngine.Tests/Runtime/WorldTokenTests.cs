using System.Net;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Rendezvous;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>A world other hosts can reach needs a token, unless explicitly allowed without one.</summary>
public class WorldTokenTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("192.0.2.1", null, "MASTER_ADDR=192.0.2.1")]
    [InlineData("127.0.0.1", "192.0.2.1", "CKPT_ENGINE_ADVERTISE_ADDR=192.0.2.1")]
    public async Task Join_OffLoopbackWithoutToken_RefusesNamingTheVariableAndTheWayOut(string master, string? advertise, string exposed)
    {
        var config = new RankConfig { Rank = 1, WorldSize = 2, MasterAddr = master, MasterPort = 29500, AdvertiseAddress = advertise is null ? null : IPAddress.Parse(advertise) };
        // Refused before binding or dialling anything: it fails at once, not at the connect timeout.
        var e = await Assert.ThrowsAsync<RendezvousException>(() => World.JoinAsync(config, Ct).WaitAsync(StoreHarness.StepDeadline, Ct));
        Assert.StartsWith($"{exposed} is not a loopback address and CKPT_ENGINE_TOKEN is not set", e.Message, StringComparison.Ordinal);
        Assert.Contains("--allow-no-token or CKPT_ENGINE_ALLOW_NO_TOKEN=1", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(true, null)]
    [InlineData(false, "a-token")]
    public async Task Join_OffLoopback_StartsWithTheAllowFlagOrAToken(bool allowNoToken, string? token)
    {
        var address = TestPorts.NonLoopbackAddress();
        Assert.SkipWhen(address is null, "this machine has no non-loopback IPv4 address");
        await using var world = await World.JoinAsync(new RankConfig { MasterAddr = address!.ToString(), Token = token, AllowNoToken = allowNoToken }, Ct)
            .WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Equal(address, world.StoreEndpoint!.Address);
        Assert.Equal(address, world.AdvertiseAddress);
    }
}
