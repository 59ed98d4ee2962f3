using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

/// <summary>The registry's host-memory budget: sized from the headers, refused before anything is allocated or mapped.</summary>
public sealed class RegistrationBudgetTests : IDisposable
{
    private readonly TempDirectory _dir = TempDirectory.OnDisk();

    public void Dispose() => _dir.Dispose();

    private string Write(string name, int floats)
    {
        var path = _dir.File(name);
        MemoryTestData.Write(path, [MemoryTestData.Tensor("w", DType.F32, [floats], 1)]);
        return path;
    }

    [Fact]
    public void Register_OverBudget_ThrowsNamingTheNumbers_AndAllocatesNothing()
    {
        using var registry = new CheckpointRegistry { Budget = 1000 };
        var path = Write("a.safetensors", 1024); // 4096 bytes.
        var e = Assert.Throws<RegistrationBudgetException>(() => registry.RegisterCheckpoint("a", [path], options: new RegisterOptions { UsePool = true }));
        Assert.Equal(("a", 0L, 4096L, 1000L), (e.Checkpoint, e.Used, e.Requested, e.Budget));
        Assert.Equal(0, registry.Pool.Allocations);
        Assert.Equal(0, registry.Pool.LeasedBytes);
        Assert.Equal(0, registry.BytesInUse);
        Assert.Empty(registry.Checkpoints);

        registry.Budget = 4096; // Exactly enough; the refused name is free.
        var c = registry.RegisterCheckpoint("a", [path], options: new RegisterOptions { UsePool = true });
        Assert.Equal(4096, c.BufferBytes);
        Assert.Equal(4096, registry.BytesInUse);
    }

    [Fact]
    public void Register_CountsWhatOthersHold_AndUnregisterGivesItBack()
    {
        using var registry = new CheckpointRegistry { Budget = 6000 };
        registry.RegisterCheckpoint("a", [Write("a.safetensors", 1024)]);
        var b = Write("b.safetensors", 512); // 2048 bytes: 4096 + 2048 > 6000.
        var e = Assert.Throws<RegistrationBudgetException>(() => registry.RegisterCheckpoint("b", [b]));
        Assert.Equal((4096L, 2048L), (e.Used, e.Requested));
        Assert.Contains("4096 bytes of the 6000 bytes registration budget are in use (1904 bytes left)", e.Message, StringComparison.Ordinal);
        Assert.True(registry.UnregisterCheckpoint("a"));
        Assert.Equal(0, registry.BytesInUse);
        registry.RegisterCheckpoint("b", [b]);
    }

    [Fact]
    public void Register_InPlace_CountsTheMappedFiles()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "in-place registration maps tmpfs files on Linux");
        using var shm = TempDirectory.InShm();
        var path = shm.File("a.safetensors");
        MemoryTestData.Write(path, [MemoryTestData.Tensor("w", DType.F32, [1024], 1)]);
        using var registry = new CheckpointRegistry { Budget = 4095 };
        Assert.Throws<RegistrationBudgetException>(() => registry.RegisterCheckpoint("a", [path], options: new RegisterOptions { InPlace = true }));
        registry.Budget = 4096;
        var c = registry.RegisterCheckpoint("a", [path], options: new RegisterOptions { InPlace = true });
        Assert.Single(c.InPlaceFiles);
        Assert.Equal(4096, registry.BytesInUse);
    }

    [Fact]
    public void DefaultBudget_IsMostOfTheMemory_SplitOverLocalRanks()
    {
        var memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        var one = CheckpointRegistry.DefaultBudget(1);
        Assert.InRange(one, memory * 8 / 10, memory * 9 / 10 + 1);
        Assert.InRange(CheckpointRegistry.DefaultBudget(4), one / 4 - 1, one / 4 + 1);
    }

    [Fact]
    public void Budget_MustBePositive() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new CheckpointRegistry { Budget = 0 });
}
