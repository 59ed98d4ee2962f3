using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

public sealed class RegistryOwnershipTests
{
    private static readonly RegisterOptions Pooled = new() { UsePool = true };

    private static NamedTensor[] Step(byte fill) => [new NamedTensor("t", DType.U8, [8], Enumerable.Repeat(fill, 8).ToArray())];

    [Fact]
    public void UnregisterCheckpoint_Pooled_PoolKeepsTheBufferForTheSameLayout_DisposeEmptiesTheOwnPool()
    {
        using var registry = new CheckpointRegistry();
        var pool = registry.Pool;
        var first = registry.RegisterCheckpoint("a", Step(1), Pooled);
        var buffer = Assert.Single(first.Buffers);
        Assert.Equal(MemoryBufferKind.Pooled, buffer.Kind);
        Assert.Equal((1, 0, NativeBuffer.Alignment, 0L), (pool.Allocations, first.PoolReuses, pool.LeasedBytes, pool.IdleBytes));

        Assert.True(registry.UnregisterCheckpoint("a"));
        Assert.True(first.IsReleased);
        Assert.Equal((0L, NativeBuffer.Alignment), (pool.LeasedBytes, pool.IdleBytes));

        var second = registry.RegisterCheckpoint("a", Step(2), Pooled);
        var again = Assert.Single(second.Buffers);
        Assert.Equal(buffer.Address, again.Address);
        Assert.Equal((1, 1L, 1L), (second.PoolReuses, pool.Reuses, pool.Allocations));
        Assert.Equal((NativeBuffer.Alignment, 0L), (pool.LeasedBytes, pool.IdleBytes));
        Assert.Equal(Enumerable.Repeat((byte)2, 8), again.Bytes(again.Metas[0]).ToArray());

        registry.Dispose(); // Idempotent: the using's call does nothing more.
        Assert.True(second.IsReleased);
        Assert.Equal((0L, 0L), (pool.LeasedBytes, pool.IdleBytes)); // The registry's own pool went with it.
        Assert.Throws<ObjectDisposedException>(() => pool.Rent(16));
    }

    [Fact]
    public void Dispose_SharedPool_GetsTheBuffersBackAndStaysUsable()
    {
        using var pool = new HostMemoryPool();
        nint address;
        using (var registry = new CheckpointRegistry(pool))
        {
            address = Assert.Single(registry.RegisterCheckpoint("a", Step(1), Pooled).Buffers).Address;
            Assert.Equal(NativeBuffer.Alignment, pool.LeasedBytes);
        }
        Assert.Equal((0L, NativeBuffer.Alignment), (pool.LeasedBytes, pool.IdleBytes)); // Given back, not freed.

        var rented = pool.Rent(16, shared: false, out var reused);
        Assert.True(reused);
        Assert.Equal(address, rented.Address);
        pool.Return(rented); // The pool owns it again and frees it when disposed.
        Assert.Equal(NativeBuffer.Alignment, pool.IdleBytes);
    }

    [Fact]
    public void RegisterCheckpoint_FailsAfterMappingInPlace_KeepsTheFile()
    {
        using var shm = TempDirectory.InShm();
        var good = shm.File("good.safetensors");
        MemoryTestData.Write(good, MemoryTestData.Mixed("g.", 1));
        var bad = shm.File("bad.safetensors");
        File.WriteAllBytes(bad, [1, 2, 3]);
        using var registry = new CheckpointRegistry();
        Assert.Throws<CheckpointFormatException>(() =>
            registry.RegisterCheckpoint("c", [good, bad], options: new RegisterOptions { InPlace = true, DeleteInPlaceFiles = true }));
        Assert.True(File.Exists(good));
        Assert.Empty(registry.Checkpoints);
    }

    [Fact]
    public unsafe void Bytes_MetaOutsideBuffer_IsRefused()
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("c", [new NamedTensor("t", DType.U8, [8], new byte[8])]);
        var buffer = c.Buffers[0];
        var outside = buffer.Metas[0] with { Offset = buffer.Size };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => buffer.Bytes(outside).Length);
        Assert.Contains("'t'", e.Message);
    }
}
