using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;
using CheckpointEngine.Server;

namespace CheckpointEngine.Tests.Server;

/// <summary>The parameter server's own rules: one operation at a time, and disposal that waits for the running one.</summary>
public sealed class ParameterServerGateTests
{
    /// <summary>A single-rank server holding one small checkpoint, and an engine trigger that blocks until released.</summary>
    private sealed class Rank : IAsyncDisposable
    {
        public readonly TaskCompletionSource Entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource Release = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private Rank(RankHost host) => Host = host;

        public RankHost Host { get; }

        public ParameterServer Server => Host.Server;

        public static async Task<Rank> StartAsync()
        {
            var config = new RankConfig { DeviceId = $"gate-test-{Guid.NewGuid():N}", HostDeviceMemory = 16 << 20 };
            var host = await RankHost.StartAsync(config, device: "host", ct: TestContext.Current.CancellationToken);
            host.Server.RegisterCheckpoint("step-1", [], [new NamedTensor("w", DType.U8, [64], new byte[64])]);
            return new Rank(host);
        }

        /// <summary>An update whose trigger waits for <see cref="Release"/> (or cancellation), then reports the engine failed.</summary>
        public Task<UpdateReport> BlockedUpdate() => Server.UpdateAsync("step-1", UpdateMode.Broadcast, async (_, ct) =>
        {
            Entered.TrySetResult();
            await Release.Task.WaitAsync(ct);
            throw new IOException("engine says no");
        }, new UpdateOptions { Timeout = TimeSpan.FromSeconds(60) });

        public async ValueTask DisposeAsync()
        {
            Release.TrySetResult();
            await Host.DisposeAsync();
        }
    }

    [Fact]
    public async Task WhileAnUpdateRuns_UnregisterGatherReleaseAndUpdate_AreRefusedNamingIt()
    {
        await using var rank = await Rank.StartAsync();
        var update = rank.BlockedUpdate();
        await rank.Entered.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal("an update of 'step-1'", rank.Server.RunningOperation);

        var refused = new Func<Task>[]
        {
            () => rank.Server.UnregisterCheckpointAsync("step-1"),
            () => rank.Server.GatherMetasAsync("step-1"),
            () => Task.Run(rank.Server.ReleaseDeviceMemory),
            () => rank.BlockedUpdate(),
        };
        foreach (var call in refused)
        {
            var e = await Assert.ThrowsAsync<ServerBusyException>(call);
            Assert.Equal("an update of 'step-1'", e.Running);
            Assert.StartsWith("rank 0 is busy with an update of 'step-1'; ", e.Message, StringComparison.Ordinal);
        }
        Assert.True(rank.Server.Registry.TryGet("step-1", out _), "the refused unregister must leave the checkpoint registered");

        rank.Release.SetResult();
        var failed = await Assert.ThrowsAsync<UpdateFailedException>(() => update);
        Assert.Contains("engine says no", failed.Message, StringComparison.Ordinal);
        Assert.Null(rank.Server.RunningOperation);
        Assert.True(await rank.Server.UnregisterCheckpointAsync("step-1", TestContext.Current.CancellationToken)); // Free again.
    }

    [Fact]
    public async Task DisposeAsync_WhileAnUpdateRuns_CancelsItAndReturnsOnlyAfterItEnded()
    {
        await using var rank = await Rank.StartAsync();
        var update = rank.BlockedUpdate();
        await rank.Entered.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        await rank.Server.DisposeAsync();
        Assert.True(update.IsCompleted, "DisposeAsync returned while the update still ran");
        await Assert.ThrowsAnyAsync<Exception>(() => update);
        Assert.Null(rank.Server.RunningOperation);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => rank.Server.UnregisterCheckpointAsync("step-1", TestContext.Current.CancellationToken));
        await rank.Server.DisposeAsync(); // Idempotent.
    }
}
