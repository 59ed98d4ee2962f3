using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

/// <summary>RL loop: the next step's checkpoint (same layout, new bytes) gets the previous step's buffers.</summary>
public sealed class PoolReuseTests : IDisposable
{
    private static readonly RegisterOptions Pooled = new() { UsePool = true, MaxBufferSize = 8 << 10, CopyThreads = 4 };

    private readonly TempDirectory _dir = TempDirectory.OnDisk();

    public void Dispose() => _dir.Dispose();

    /// <summary>A two-file step whose tensors all depend on <paramref name="seed"/>; the layout does not.</summary>
    private (List<string> Files, List<TensorSpec> Tensors) WriteStep(int seed)
    {
        var mixed = MemoryTestData.Mixed("model.", seed);
        var tiny = MemoryTestData.Tiny("model.tiny.", 120, seed + 1000);
        List<TensorSpec> large = [MemoryTestData.Tensor("model.embed", DType.BF16, [20, 150], seed + 5000)];
        var a = _dir.File($"step{seed}-a.safetensors");
        var b = _dir.File($"step{seed}-b.safetensors");
        MemoryTestData.Write(a, mixed.Concat(large));
        MemoryTestData.Write(b, tiny);
        return ([a, b], [.. mixed, .. tiny, .. large]);
    }

    [Fact]
    public void RegisterCheckpoint_SameLayoutAfterUnregister_ReusesEveryBuffer()
    {
        var (files1, tensors1) = WriteStep(1);
        var (files2, tensors2) = WriteStep(2);
        Assert.NotEqual(tensors1[0].Data, tensors2[0].Data);
        using var registry = new CheckpointRegistry();

        var step1 = registry.RegisterCheckpoint("step", files1, options: Pooled);
        MemoryTestData.AssertHolds(step1, tensors1);
        Assert.True(step1.Buffers.Count > 3, $"got {step1.Buffers.Count} buffers");
        Assert.All(step1.Buffers, b => Assert.Equal(MemoryBufferKind.Pooled, b.Kind));
        Assert.Equal(0, step1.PoolReuses);
        var allocations = registry.Pool.Allocations;
        Assert.Equal(step1.Buffers.Count, allocations);
        var addresses = step1.Buffers.Select(b => b.Address).ToList();
        var layout = MemoryTestData.Layout(step1);
        Assert.True(registry.Pool.LeasedBytes >= step1.BufferBytes);

        Assert.True(registry.UnregisterCheckpoint("step"));
        Assert.True(step1.IsReleased);
        Assert.Equal(0, registry.Pool.LeasedBytes);
        Assert.True(registry.Pool.IdleBytes >= step1.BufferBytes);

        var step2 = registry.RegisterCheckpoint("step", files2, options: Pooled);
        Assert.Equal(step2.Buffers.Count, step2.PoolReuses);
        Assert.Equal(allocations, registry.Pool.Allocations);
        Assert.Equal(addresses, step2.Buffers.Select(b => b.Address));
        Assert.Equal(layout, MemoryTestData.Layout(step2));
        Assert.Equal(0, registry.Pool.IdleBytes);
        MemoryTestData.AssertHolds(step2, tensors2);
    }

    [Fact]
    public void RegisterCheckpoint_ManySteps_AllocatesOnlyOnce()
    {
        var steps = Enumerable.Range(0, 4).Select(i => WriteStep(10 * (i + 1))).ToList();
        using var registry = new CheckpointRegistry();
        long? allocations = null;
        foreach (var (files, tensors) in steps)
        {
            var c = registry.RegisterCheckpoint("policy", files, options: Pooled);
            MemoryTestData.AssertHolds(c, tensors);
            allocations ??= registry.Pool.Allocations;
            Assert.Equal(allocations, registry.Pool.Allocations);
            registry.UnregisterCheckpoint("policy");
        }
        Assert.Equal(3 * allocations, registry.Pool.Reuses);
    }

    [Fact]
    public void RegisterCheckpoint_NamedTensorsSameLayout_ReusesEveryBuffer()
    {
        // The trainer path: tensors handed over in memory every step.
        using var registry = new CheckpointRegistry();
        var step1 = MemoryTestData.Tiny("w.", 100, seed: 1);
        var step2 = step1.Select((t, i) => t.WithSeed(500 + i)).ToList();
        var c1 = registry.RegisterCheckpoint("s", Array.Empty<string>(), step1.Select(t => t.ToNamed()), Pooled);
        var addresses = c1.Buffers.Select(b => b.Address).ToList();
        registry.UnregisterCheckpoint("s");
        var c2 = registry.RegisterCheckpoint("s", Array.Empty<string>(), step2.Select(t => t.ToNamed()), Pooled);
        Assert.Equal(c2.Buffers.Count, c2.PoolReuses);
        Assert.Equal(addresses, c2.Buffers.Select(b => b.Address));
        MemoryTestData.AssertHolds(c2, step2);
    }

    [Fact]
    public void RegisterCheckpoint_WhilePreviousStillRegistered_AllocatesNewBuffers()
    {
        var (files1, _) = WriteStep(1);
        var (files2, tensors2) = WriteStep(2);
        using var registry = new CheckpointRegistry();
        var step1 = registry.RegisterCheckpoint("step1", files1, options: Pooled);
        var step2 = registry.RegisterCheckpoint("step2", files2, options: Pooled);
        Assert.Equal(0, step2.PoolReuses);
        Assert.Empty(step1.Buffers.Select(b => b.Address).Intersect(step2.Buffers.Select(b => b.Address)));
        MemoryTestData.AssertHolds(step2, tensors2);
    }

    [Fact]
    public void RegisterCheckpoint_ConcurrentPooled_PoolReusesAddUp()
    {
        using var registry = new CheckpointRegistry();
        var steps = Enumerable.Range(0, 4).Select(i => MemoryTestData.Tiny($"r{i}.", 60, seed: i * 100)).ToList();
        for (var round = 0; round < 3; round++)
        {
            var reusesBefore = registry.Pool.Reuses;
            var registered = new RegisteredCheckpoint[steps.Count];
            Parallel.For(0, steps.Count, i =>
                registered[i] = registry.RegisterCheckpoint($"c{i}", Array.Empty<string>(), steps[i].Select(t => t.ToNamed()), Pooled with { CopyThreads = 1 }));
            Assert.Equal(registry.Pool.Reuses - reusesBefore, registered.Sum(c => c.PoolReuses));
            for (var i = 0; i < steps.Count; i++)
            {
                MemoryTestData.AssertHolds(registered[i], steps[i]);
                Assert.True(registry.UnregisterCheckpoint($"c{i}"));
            }
        }
        Assert.Equal(0, registry.Pool.LeasedBytes);
    }

    [Fact]
    public void Trim_AfterUnregister_FreesIdleBytes()
    {
        var (files, _) = WriteStep(1);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("step", files, options: Pooled);
        Assert.Equal(0, registry.Pool.Trim());
        registry.UnregisterCheckpoint("step");
        var idle = registry.Pool.IdleBytes;
        Assert.True(idle >= c.BufferBytes);
        Assert.Equal(idle, registry.Pool.Trim());
        Assert.Equal(0, registry.Pool.IdleBytes);

        var again = registry.RegisterCheckpoint("step", files, options: Pooled);
        Assert.Equal(0, again.PoolReuses);
    }

    [Fact]
    public void RegisterCheckpoint_WithoutPool_LeavesPoolAloneAndFreesOnUnregister()
    {
        var (files, tensors) = WriteStep(1);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("owned", files, options: Pooled with { UsePool = false });
        MemoryTestData.AssertHolds(c, tensors);
        Assert.All(c.Buffers, b => Assert.Equal(MemoryBufferKind.Owned, b.Kind));
        Assert.Equal(0, c.PoolReuses);
        AssertPoolUntouched(registry.Pool);

        Assert.True(registry.UnregisterCheckpoint("owned"));
        Assert.True(c.IsReleased);
        AssertPoolUntouched(registry.Pool);
        Assert.Empty(registry.Checkpoints);
    }

    [Fact]
    public void UnregisterCheckpoint_UnknownOrAlreadyRemoved_ReturnsFalse()
    {
        using var registry = new CheckpointRegistry();
        Assert.False(registry.UnregisterCheckpoint("nothing"));
        registry.RegisterCheckpoint("x", Array.Empty<string>(), [MemoryTestData.Tensor("w", DType.F32, [4], 1).ToNamed()], Pooled);
        Assert.False(registry.UnregisterCheckpoint("X"));
        Assert.True(registry.UnregisterCheckpoint("x"));
        Assert.False(registry.UnregisterCheckpoint("x"));
        Assert.Equal(0, registry.Pool.LeasedBytes);
    }

    [Fact]
    public void Dispose_ReleasesEverything()
    {
        var (files, _) = WriteStep(1);
        var registry = new CheckpointRegistry();
        var pooled = registry.RegisterCheckpoint("pooled", files, options: Pooled);
        var owned = registry.RegisterCheckpoint("owned", files, options: Pooled with { UsePool = false });
        var idle = registry.RegisterCheckpoint("idle", Array.Empty<string>(), [MemoryTestData.Tensor("w", DType.F32, [4], 1).ToNamed()], Pooled);
        registry.UnregisterCheckpoint("idle");
        Assert.True(registry.Pool.IdleBytes > 0);

        registry.Dispose();

        Assert.True(pooled.IsReleased);
        Assert.True(owned.IsReleased);
        Assert.True(idle.IsReleased);
        Assert.Empty(registry.Checkpoints);
        Assert.False(registry.TryGet("pooled", out _));
        Assert.Equal(0, registry.Pool.LeasedBytes);
        Assert.Equal(0, registry.Pool.IdleBytes);
        Assert.False(registry.UnregisterCheckpoint("pooled"));
        Assert.Throws<ObjectDisposedException>(() => registry.RegisterCheckpoint("new", files));
        Assert.Throws<ObjectDisposedException>(() => registry.Pool.Rent(1));
        registry.Dispose();
    }

    private static void AssertPoolUntouched(HostMemoryPool pool)
    {
        Assert.Equal(0, pool.Allocations);
        Assert.Equal(0, pool.Reuses);
        Assert.Equal(0, pool.LeasedBytes);
        Assert.Equal(0, pool.IdleBytes);
    }
}
