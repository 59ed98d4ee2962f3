using System.Net.Sockets;
using CheckpointEngine.Memory;
using CheckpointEngine.Server;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Server;

/// <summary>
/// The host backend on one host: registered buffers are owner-only shared-memory segments, a worker that maps them loads
/// straight out of them (nothing staged or broadcast), and a worker that does not (an older one) gets the staged copy as before.
/// </summary>
public sealed class InPlaceUpdateTests
{
    private static readonly byte[] WeightsA = [.. Enumerable.Range(0, 5000).Select(i => (byte)(i * 31 + 7))];
    private static readonly byte[] WeightsB = [.. Enumerable.Range(0, 777).Select(i => (byte)(i * 13 + 1))];

    private static Task<SingleRank> StartAsync() =>
        SingleRank.StartAsync(new NamedTensor("a", DType.U8, [WeightsA.Length], WeightsA), new NamedTensor("b", DType.U8, [WeightsB.Length], WeightsB));

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public async Task Update_WorkerMapsSegments_LoadsStraightFromTheRegisteredSegment_NothingStaged()
    {
        await using var rank = await StartAsync();
        Assert.True(rank.Server.Registry.TryGet("step-1", out var checkpoint));
        var segment = Assert.Single(checkpoint.Buffers).Segment;
        Assert.NotNull(segment);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(segment.Path));

        for (var u = 0; u < 2; u++)
        {
            var (report, received) = await rank.UpdateAsync();

            Assert.True(report.InPlace);
            Assert.Equal((0L, TimeSpan.Zero), (report.BytesStaged, report.HostToDevice));
            Assert.Equal(WeightsA, received["a"]);
            Assert.Equal(WeightsB, received["b"]);
        }
    }

    [Fact]
    public async Task Update_WorkerThatDoesNotMapSegments_GetsTheStagedCopy_BitExact()
    {
        await using var rank = await StartAsync();
        var received = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var report = await rank.Server.UpdateAsync("step-1", UpdateMode.Broadcast, async (context, ct) =>
        {
            var ticket = context.Sockets.Single().Ticket;
            using var socket = await WeightReceiver.ConnectAsync(ticket.Address, SingleRank.Deadline, null, ct);
            using var stream = new NetworkStream(socket);
            await WorkerFraming.WriteAsync(stream, new WorkerHello(ticket.Session), ct); // An older worker: no "segments".
            SharedMemorySegment? buffer = null;
            try
            {
                while (await WorkerFraming.ReadAsync<WorkerMessage>(stream, ct) is { } message)
                {
                    if (message is AttachMessage attach)
                    {
                        Assert.Null(attach.Segments);
                        buffer = SharedMemorySegment.Open(attach.Handle, attach.Size);
                    }
                    foreach (var t in (message as LoadMessage)?.Tensors ?? [])
                    {
                        Assert.Null(t.Segment);
                        received[t.Name] = Bytes(buffer!, t.Offset, t.NBytes);
                    }
                    await WorkerFraming.WriteAsync(stream, WorkerReply.Success, ct);
                    if (message is FinishMessage or AbortMessage)
                    {
                        return;
                    }
                }
            }
            finally
            {
                buffer?.Dispose();
            }
        }, new UpdateOptions { Timeout = SingleRank.Deadline }, TestContext.Current.CancellationToken);

        Assert.False(report.InPlace);
        Assert.True(report.BytesStaged >= WeightsA.Length + WeightsB.Length, $"staged {report.BytesStaged} bytes");
        Assert.Equal(WeightsA, received["a"]);
        Assert.Equal(WeightsB, received["b"]);
    }

    [Fact]
    public async Task Prepare_MovesNothing_TheWorkerKeepsTheRegisteredSegmentMapped_TheUpdateAfterIsBitExact()
    {
        await using var rank = await StartAsync();
        Assert.True(rank.Server.Registry.TryGet("step-1", out var checkpoint));
        var segment = Assert.Single(checkpoint.Buffers).Segment!;
        var loads = 0;
        var hooks = 0;
        var prepared = await rank.Server.PrepareAsync("step-1", UpdateMode.Broadcast, (context, ct) => WeightReceiver.ReceiveAsync(context.Sockets.Single().Ticket.ToString(),
            (_, _) => loads++, _ => { hooks++; return ValueTask.CompletedTask; }, SingleRank.Deadline, ct), new UpdateOptions { Timeout = SingleRank.Deadline }, TestContext.Current.CancellationToken);

        Assert.Empty(prepared.Buckets);
        Assert.Equal((0L, 0, 0, true), (prepared.BytesDelivered, loads, hooks, prepared.InPlace));
        Assert.Contains(File.ReadLines("/proc/self/maps"), l => l.Contains(" r--s ", StringComparison.Ordinal) && l.EndsWith(segment.Path, StringComparison.Ordinal));
        Assert.Null(rank.Server.Telemetry.Last); // A prepare is not an update.
        var (report, received) = await rank.UpdateAsync();
        Assert.True(report.InPlace);
        Assert.Equal(WeightsA, received["a"]);
        Assert.Equal(WeightsB, received["b"]);
    }

    [Fact]
    public async Task Prepare_AWorkerThatCannotPrepare_FailsItNamingTheDevice_TheUpdateAfterWorks()
    {
        await using var rank = await StartAsync();
        var error = await Assert.ThrowsAsync<UpdateFailedException>(() => rank.Server.PrepareAsync("step-1", UpdateMode.Broadcast, async (context, ct) =>
        {
            var ticket = context.Sockets.Single().Ticket;
            using var socket = await WeightReceiver.ConnectAsync(ticket.Address, SingleRank.Deadline, null, ct);
            using var stream = new NetworkStream(socket);
            await WorkerFraming.WriteAsync(stream, new WorkerHello(ticket.Session, Segments: true), ct); // An older worker: no "prepares".
            while (await WorkerFraming.ReadAsync<WorkerMessage>(stream, ct) is { } message)
            {
                Assert.IsType<AbortMessage>(message); // Nothing else reaches it.
                await WorkerFraming.WriteAsync(stream, WorkerReply.Success, ct);
            }
        }, new UpdateOptions { Timeout = SingleRank.Deadline }, TestContext.Current.CancellationToken));

        Assert.Contains($"the worker of device '{rank.Server.Device.Id}' cannot prepare", error.Message, StringComparison.Ordinal);
        var (_, received) = await rank.UpdateAsync();
        Assert.Equal(WeightsA, received["a"]);
    }

    private static unsafe byte[] Bytes(SharedMemorySegment segment, long offset, long length) =>
        new ReadOnlySpan<byte>(segment.Pointer + offset, checked((int)length)).ToArray();
}

/// <summary>Cold ≈ warm: device buffers are allocated when metas are gathered, and faulted in then when the update will stage into them.</summary>
public sealed class DeviceMemoryAheadTests
{
    private static readonly byte[] Weights = [.. Enumerable.Range(0, 3000).Select(i => (byte)(i * 17 + 3))];

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Gather_AllocatesDeviceBuffers_FaultsThemInOnlyWhenTheUpdateWillStage(bool sharedMemory)
    {
        var config = new CheckpointEngine.Runtime.RankConfig { DeviceId = $"ahead-test-{Guid.NewGuid():N}", HostDeviceMemory = 16 << 20 };
        await using var host = await RankHost.StartAsync(config, device: "host", ct: TestContext.Current.CancellationToken);
        var ps = host.Server;
        ps.Registry.SharedMemory = sharedMemory; // Private memory: workers cannot read it in place, the update stages.
        ps.RegisterCheckpoint("step-1", [], [new NamedTensor("w", DType.U8, [Weights.Length], Weights)]);
        Assert.Equal(0, ps.DeviceBytes);

        await ps.GatherMetasAsync("step-1", SingleRank.Deadline, TestContext.Current.CancellationToken);

        Assert.True(ps.DeviceBytes > 0);
        Assert.Equal(sharedMemory ? 0 : ps.DeviceBytes, ps.PreparedDeviceBytes);
        var allocated = ps.DeviceBytes;
        var received = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var report = await ps.UpdateAsync("step-1", UpdateMode.Broadcast, (context, ct) => WeightReceiver.ReceiveAsync(context.Sockets.Single().Ticket.ToString(),
            (_, tensors) => received["w"] = tensors.Single().Span.ToArray(), null, SingleRank.Deadline, ct),
            new UpdateOptions { Timeout = SingleRank.Deadline }, TestContext.Current.CancellationToken);
        Assert.Equal((sharedMemory, !sharedMemory), (report.InPlace, report.ReadInStaging)); // Private memory: staged, read where it was staged.
        Assert.Equal(allocated, ps.DeviceBytes); // The update used the buffers allocated ahead.
        Assert.Equal(Weights, received["w"]);
    }

    /// <summary>A joiner that loads a fleet's metas allocates its device buffers then and faults them in: its P2P updates stage into them.</summary>
    [Fact]
    public async Task SetMetas_OnAJoiner_AllocatesDeviceBuffersAndFaultsThemIn()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var owner = await RankHost.StartAsync(new CheckpointEngine.Runtime.RankConfig { DeviceId = $"ahead-owner-{Guid.NewGuid():N}", HostDeviceMemory = 16 << 20 },
            device: "host", ct: ct);
        owner.Server.RegisterCheckpoint("step-1", [], [new NamedTensor("w", DType.U8, [Weights.Length], Weights)]);
        var metas = await owner.Server.GatherMetasAsync("step-1", SingleRank.Deadline, ct);
        await using var joiner = await RankHost.StartAsync(new CheckpointEngine.Runtime.RankConfig { DeviceId = $"ahead-joiner-{Guid.NewGuid():N}", HostDeviceMemory = 16 << 20 },
            device: "host", ct: ct);
        Assert.Equal(0, joiner.Server.DeviceBytes);

        joiner.Server.SetMetas(metas);

        Assert.Same(metas, joiner.Server.GetMetas("step-1"));
        Assert.True(joiner.Server.DeviceBytes > 0);
        Assert.Equal(joiner.Server.DeviceBytes, joiner.Server.PreparedDeviceBytes);
    }

    /// <summary>Metas of a checkpoint no rank holds (nothing to size buffers for) are kept, and nothing is allocated.</summary>
    [Fact]
    public async Task SetMetas_OfNoTensors_KeepsThemAndAllocatesNothing()
    {
        await using var joiner = await RankHost.StartAsync(new CheckpointEngine.Runtime.RankConfig { DeviceId = $"ahead-empty-{Guid.NewGuid():N}", HostDeviceMemory = 16 << 20 },
            device: "host", ct: TestContext.Current.CancellationToken);
        var metas = new CheckpointEngine.Planning.GlobalMetas("nothing", [new CheckpointEngine.Planning.RankMetas(0, joiner.Server.Device.Id, null, [])]);

        joiner.Server.SetMetas(metas);

        Assert.Same(metas, joiner.Server.GetMetas("nothing"));
        Assert.Equal(0, joiner.Server.DeviceBytes);
    }
}
