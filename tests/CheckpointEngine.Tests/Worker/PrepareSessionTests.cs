using System.Globalization;
using CheckpointEngine.Memory;
using CheckpointEngine.Tests.Support;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

/// <summary>
/// A session that only prepares (the attach says "prepare"): the worker maps what the attach names, with "prefault" faults in the
/// further segments' pages that hold data (never a hole), keeps the mappings, and the session ends at "release" without loads,
/// "finish" or the post-load hook.
/// </summary>
public sealed class PrepareSessionTests : IDisposable
{
    private const int Page = 4096;
    private readonly FakeParameterServer _ps = FakeParameterServer.Start();

    public void Dispose() => _ps.Dispose();

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task Prepare_FaultsInTheRegisteredPagesThatHoldData_NotTheHoles_EndsAtRelease_WithoutTheHook()
    {
        // The owner wrote its first 64 pages; the 64 after them are a hole, which the worker must not allocate by reading it.
        using var registered = SharedMemorySegment.Create("ckpt-test-prep-" + Guid.NewGuid().ToString("N")[..16], 128 * Page);
        unsafe
        {
            new Span<byte>(registered.Pointer, 64 * Page).Fill(7);
        }
        var hookRan = false;
        var loads = 0;
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, _) => loads++, _ => { hookRan = true; return ValueTask.CompletedTask; },
            FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        await _ps.AcceptAsync();
        Assert.True(_ps.Hello!.Prepares);

        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach with { Segments = [new SegmentRef(registered.Name, registered.Size)], Prepare = true, Prefault = true }));
        Assert.Equal(64L * Page, ReadOnlyMappingRss(registered.Path)); // In this process's page tables now: the first update faults nothing there.
        FakeParameterServer.AssertOk(await _ps.SendAsync(new ReleaseMessage()));
        var summary = await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);

        Assert.Equal((0, 0, 0L), (summary.Buckets, summary.Tensors, summary.Bytes));
        Assert.False(hookRan);
        Assert.Equal(0, loads);
        Assert.Equal(64L * Page, ReadOnlyMappingRss(registered.Path)); // Kept mapped for the update that follows.
        WeightReceiver.ReleaseMappings();
        Assert.Equal(-1, ReadOnlyMappingRss(registered.Path));
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task Prepare_WithoutPrefault_OnlyMaps()
    {
        using var registered = SharedMemorySegment.Create("ckpt-test-prep-" + Guid.NewGuid().ToString("N")[..16], 16 * Page);
        unsafe
        {
            new Span<byte>(registered.Pointer, 16 * Page).Fill(7);
        }
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, _) => { }, null, FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach with { Segments = [new SegmentRef(registered.Name, registered.Size)], Prepare = true }));
        Assert.Equal(0, ReadOnlyMappingRss(registered.Path)); // Mapped, nothing faulted in: the update reads only what it needs.
        FakeParameterServer.AssertOk(await _ps.SendAsync(new ReleaseMessage()));
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        WeightReceiver.ReleaseMappings();
    }

    [Fact]
    public async Task Prepare_ALoadInTheSession_IsRefused()
    {
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, _) => { }, null, FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach with { Prepare = true }));

        var reply = await _ps.SendAsync(new LoadMessage(0, _ps.Place([TestTensor.Random("w", DType.F32, [4])])));

        Assert.Equal(new WorkerReply(false, "'load' in a session that only prepares (its attach said \"prepare\")"), reply);
        _ps.CloseConnection();
        await Assert.ThrowsAsync<WeightReceiveException>(() => task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken));
        WeightReceiver.ReleaseMappings();
    }

    /// <summary>The resident bytes of this process's read-only shared mapping of <paramref name="path"/> (/proc/self/smaps), or -1 when there is none.</summary>
    private static long ReadOnlyMappingRss(string path)
    {
        var inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            if (line.Length > 0 && char.IsAsciiHexDigit(line[0]) && line.Contains('-', StringComparison.Ordinal) && !line.StartsWith("Rss", StringComparison.Ordinal))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                inside = fields.Length >= 6 && fields[1] == "r--s" && fields[^1] == path;
            }
            else if (inside && line.StartsWith("Rss:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        return -1;
    }
}
