using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

public sealed class RegistryOwnershipTests
{
    [Fact]
    public void Dispose_SharedPool_StaysUsable()
    {
        using var pool = new HostMemoryPool();
        using (var registry = new CheckpointRegistry(pool))
        {
            registry.RegisterCheckpoint("a", [new NamedTensor("t", DType.U8, [8], new byte[8])], new RegisterOptions { UsePool = true });
        }
        Assert.True(pool.IdleBytes > 0); // The registry gave its buffers back and left the pool alone.
        using var other = pool.Rent(16);
        pool.Return(other);
    }

    [Fact]
    public void RegisterCheckpoint_FailsAfterMappingInPlace_KeepsTheFile()
    {
        using var shm = TempDir.InShm();
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
