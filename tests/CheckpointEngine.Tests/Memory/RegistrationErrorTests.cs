using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

/// <summary>Bad input is reported with names, and a failed registration leaves nothing behind.</summary>
public sealed class RegistrationErrorTests : IDisposable
{
    private static readonly RegisterOptions Pooled = new() { UsePool = true, MaxBufferSize = 4096, CopyThreads = 4 };

    private readonly TempDirectory _dir = TempDirectory.OnDisk();
    private readonly List<TensorSpec> _first = MemoryTestData.Mixed("first.", seed: 1);
    private readonly List<TensorSpec> _second = MemoryTestData.Tiny("second.", 40, seed: 2);
    private readonly string _firstPath;
    private readonly string _secondPath;

    public RegistrationErrorTests()
    {
        _firstPath = _dir.File("first.safetensors");
        _secondPath = _dir.File("second.safetensors");
        MemoryTestData.Write(_firstPath, _first);
        MemoryTestData.Write(_secondPath, _second);
    }

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void RegisterCheckpoint_SameNameTwice_ThrowsNamingTheCheckpoint()
    {
        using var registry = new CheckpointRegistry();
        var first = registry.RegisterCheckpoint("policy-step-7", [_firstPath]);
        var e = Assert.Throws<InvalidOperationException>(() => registry.RegisterCheckpoint("policy-step-7", [_secondPath]));
        Assert.Contains("policy-step-7", e.Message);
        Assert.Same(first, Assert.Single(registry.Checkpoints));
        Assert.False(first.IsReleased);
        MemoryTestData.AssertHolds(first, _first);
    }

    [Fact]
    public void RegisterCheckpoint_AfterUnregister_SameNameWorks()
    {
        using var registry = new CheckpointRegistry();
        registry.RegisterCheckpoint("x", [_firstPath]);
        Assert.True(registry.UnregisterCheckpoint("x"));
        MemoryTestData.AssertHolds(registry.RegisterCheckpoint("x", [_secondPath]), _second);
    }

    [Theory]
    [InlineData("")]
    [InlineData("  ")]
    public void RegisterCheckpoint_BlankName_Throws(string name)
    {
        using var registry = new CheckpointRegistry();
        Assert.ThrowsAny<ArgumentException>(() => registry.RegisterCheckpoint(name, [_firstPath]));
        Assert.Empty(registry.Checkpoints);
    }

    [Fact]
    public void RegisterCheckpoint_ConcurrentSameName_ExactlyOneSucceeds()
    {
        using var registry = new CheckpointRegistry();
        var payload = MemoryTestData.Tensor("w", DType.U8, [1 << 20], seed: 4);
        for (var round = 0; round < 10; round++)
        {
            using var start = new Barrier(2);
            var tasks = Enumerable.Range(0, 2).Select(i => Task.Run(() =>
            {
                start.SignalAndWait();
                return registry.RegisterCheckpoint("contended", [new FileSelection(_firstPath)], [payload.ToNamed()], Pooled);
            })).ToArray();
            var outcomes = tasks.Select(Outcome).ToList();
            var winner = Assert.Single(outcomes, o => o.Checkpoint is not null).Checkpoint!;
            var loser = Assert.Single(outcomes, o => o.Error is not null).Error!;
            Assert.Contains("contended", loser.Message);
            Assert.True(registry.TryGet("contended", out var registered));
            Assert.Same(winner, registered);
            MemoryTestData.AssertHolds(winner, _first.Append(payload));
            Assert.True(registry.UnregisterCheckpoint("contended"));
            Assert.Equal(0, registry.Pool.LeasedBytes);
        }
    }

    [Fact]
    public void RegisterCheckpoint_DuplicateTensorAcrossFiles_NamesBothFiles()
    {
        var other = _dir.File("other.safetensors");
        MemoryTestData.Write(other, [MemoryTestData.Tensor("first.norm.weight", DType.F32, [33], seed: 5)]);
        using var registry = new CheckpointRegistry();
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("dup", [_firstPath, _secondPath, other], options: Pooled));
        Assert.Equal("first.norm.weight", e.Tensor);
        Assert.Contains(other, e.Message);
        Assert.Contains(_firstPath, e.Message);
        Assert.Contains("first.norm.weight", e.Message);
        AssertNothingLeft(registry, "dup");
    }

    [Fact]
    public void RegisterCheckpoint_DuplicateBetweenFileAndNamedTensor_NamesBothOrigins()
    {
        using var registry = new CheckpointRegistry();
        var clash = MemoryTestData.Tensor("second.007", DType.U8, [3], seed: 6).ToNamed();
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("dup", [_firstPath, _secondPath], [clash], Pooled));
        Assert.Equal("second.007", e.Tensor);
        Assert.Contains(_secondPath, e.Message);
        Assert.Contains("in-memory", e.Message);
        AssertNothingLeft(registry, "dup");
    }

    [Fact]
    public void RegisterCheckpoint_DuplicateNamedTensors_Throws()
    {
        using var registry = new CheckpointRegistry();
        var a = MemoryTestData.Tensor("same", DType.U8, [3], seed: 6).ToNamed();
        var b = MemoryTestData.Tensor("same", DType.U8, [4], seed: 7).ToNamed();
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("dup", Array.Empty<string>(), [a, b]));
        Assert.Equal("same", e.Tensor);
        AssertNothingLeft(registry, "dup");
    }

    [Fact]
    public void RegisterCheckpoint_SelectionNamesMissingTensor_NamesFileAndTensor()
    {
        using var registry = new CheckpointRegistry();
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("missing",
            [new FileSelection(_firstPath), new FileSelection(_secondPath, ["second.001", "second.does_not_exist"])], options: Pooled));
        Assert.Contains(_secondPath, e.Message);
        Assert.Contains("second.does_not_exist", e.Message);
        Assert.Equal("second.does_not_exist", e.Tensor);
        AssertNothingLeft(registry, "missing");
    }

    [Fact]
    public void RegisterCheckpoint_SelectionNamesATensorTwice_Throws()
    {
        using var registry = new CheckpointRegistry();
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("twice",
            [new FileSelection(_secondPath, ["second.001", "second.001"])]));
        Assert.Equal("second.001", e.Tensor);
        AssertNothingLeft(registry, "twice");
    }

    [Fact]
    public void RegisterCheckpoint_SameFileTwice_Throws()
    {
        using var registry = new CheckpointRegistry();
        var e = Assert.Throws<ArgumentException>(() => registry.RegisterCheckpoint("twice",
            [new FileSelection(_firstPath), new FileSelection(_secondPath), new FileSelection(_firstPath)], options: Pooled));
        Assert.Contains(_firstPath, e.Message);
        Assert.Contains("twice", e.Message);
        AssertNothingLeft(registry, "twice");
    }

    [Fact]
    public void RegisterCheckpoint_SameFileTwiceUnderAnotherSpelling_Throws()
    {
        using var registry = new CheckpointRegistry();
        var respelled = Path.Combine(_dir.Path, "..", Path.GetFileName(_dir.Path), "first.safetensors");
        Assert.Throws<ArgumentException>(() => registry.RegisterCheckpoint("twice",
            [new FileSelection(_firstPath, ["first.step"]), new FileSelection(respelled, ["first.norm.scale"])]));
        AssertNothingLeft(registry, "twice");
    }

    [Fact]
    public void RegisterCheckpoint_MissingPath_ThrowsNamingIt()
    {
        using var registry = new CheckpointRegistry();
        var missing = _dir.File("nope.safetensors");
        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("missing", [_firstPath, missing]));
        Assert.Contains(missing, e.Message);
        AssertNothingLeft(registry, "missing");
    }

    [Fact]
    public void RegisterCheckpoint_MalformedFileAfterGoodOnes_LeavesNothingBehind()
    {
        using var registry = new CheckpointRegistry();
        var keep = registry.RegisterCheckpoint("keep", [_secondPath], options: Pooled);
        var bad = _dir.File("z-bad.safetensors");
        File.WriteAllBytes(bad, [.. BitConverter.GetBytes(20L), .. "{\"x\": not json    "u8]);
        var before = registry.Checkpoints;
        var leased = registry.Pool.LeasedBytes;

        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("step", [_firstPath, _secondPath, bad], options: Pooled));
        Assert.Contains(bad, e.Message);

        Assert.False(registry.TryGet("step", out _));
        Assert.Equal(before, registry.Checkpoints);
        Assert.Equal(leased, registry.Pool.LeasedBytes);
        MemoryTestData.AssertHolds(keep, _second);
        var again = registry.RegisterCheckpoint("step", [_firstPath], options: Pooled);
        MemoryTestData.AssertHolds(again, _first);
    }

    [Fact]
    public void RegisterCheckpoint_FileTruncatedDuringCopy_ReturnsBuffersAndLeavesNothingBehind()
    {
        // The named tensors are enumerated after the files are opened and checked, before any copy:
        // cutting a file there makes the copy fail after the buffers were rented.
        var victim = _dir.File("victim.safetensors");
        File.Copy(_secondPath, victim);
        using var registry = new CheckpointRegistry();
        var keep = registry.RegisterCheckpoint("keep", [_firstPath], options: Pooled);
        var before = registry.Checkpoints;
        var leased = registry.Pool.LeasedBytes;
        var allocations = registry.Pool.Allocations;

        IEnumerable<NamedTensor> TruncateVictimThenYield()
        {
            using (var f = new FileStream(victim, FileMode.Open, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete))
            {
                f.SetLength(f.Length - 3);
            }
            yield return MemoryTestData.Tensor("extra", DType.F32, [10], seed: 3).ToNamed();
        }

        var e = Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("step", [victim], TruncateVictimThenYield(), Pooled));
        Assert.Contains(victim, e.Message);
        Assert.True(registry.Pool.Allocations > allocations, "buffers should have been rented before the copy failed");
        Assert.False(registry.TryGet("step", out _));
        Assert.Equal(before, registry.Checkpoints);
        Assert.Equal(leased, registry.Pool.LeasedBytes);
        MemoryTestData.AssertHolds(keep, _first);

        var again = registry.RegisterCheckpoint("step", [_secondPath], options: Pooled);
        MemoryTestData.AssertHolds(again, _second);
        Assert.True(again.PoolReuses > 0, "the buffers returned by the failed registration should be reused");
    }

    [Fact]
    public void RegisterCheckpoint_RegistryDisposedMeanwhile_ThrowsAndKeepsNothing()
    {
        var registry = new CheckpointRegistry();
        IEnumerable<NamedTensor> DisposeRegistryThenYield()
        {
            registry.Dispose();
            yield return MemoryTestData.Tensor("w", DType.F32, [10], seed: 3).ToNamed();
        }
        Assert.Throws<ObjectDisposedException>(() => registry.RegisterCheckpoint("late", [_firstPath], DisposeRegistryThenYield()));
        Assert.Empty(registry.Checkpoints);
        Assert.False(registry.TryGet("late", out _));
        Assert.Equal(0, registry.Pool.LeasedBytes);
    }

    [Fact]
    public void RegisterCheckpoint_AfterDispose_Throws()
    {
        var registry = new CheckpointRegistry();
        registry.Dispose();
        Assert.Throws<ObjectDisposedException>(() => registry.RegisterCheckpoint("x", [_firstPath]));
    }

    [Fact]
    public void NamedTensor_WrongByteLength_ThrowsNamingTheTensor()
    {
        var e = Assert.Throws<ArgumentException>(() => new NamedTensor("layers.3.w", DType.F32, [3], new byte[11]));
        Assert.Contains("layers.3.w", e.Message);
        Assert.Contains("11", e.Message);
        Assert.Contains("12", e.Message);
    }

    [Fact]
    public unsafe void NamedTensor_FromPointerWrongByteLength_ThrowsNamingTheTensor()
    {
        var data = new byte[16];
        fixed (byte* p = data)
        {
            var pointer = (nint)p;
            var e = Assert.Throws<ArgumentException>(() => NamedTensor.FromPointer("native.w", DType.BF16, [4], pointer, 16));
            Assert.Contains("native.w", e.Message);
        }
    }

    [Fact]
    public void NamedTensor_FromNullPointer_ThrowsNamingTheTensor()
    {
        var e = Assert.Throws<ArgumentException>(() => NamedTensor.FromPointer("native.w", DType.BF16, [4], 0, 8));
        Assert.Contains("native.w", e.Message);
    }

    [Fact]
    public void NamedTensor_InvalidShape_ThrowsNamingTheTensor()
    {
        Assert.Contains("neg", Assert.Throws<ArgumentException>(() => new NamedTensor("neg", DType.F32, [-1], Array.Empty<byte>())).Message);
        Assert.Contains("f4", Assert.Throws<ArgumentException>(() => new NamedTensor("f4", DType.F4, [3], new byte[2])).Message);
        Assert.ThrowsAny<ArgumentException>(() => new NamedTensor("", DType.F32, [], new byte[4]));
    }

    [Fact]
    public void NamedTensor_Valid_KeepsFields()
    {
        var t = new NamedTensor("w", DType.BF16, [2, 3], new byte[12]);
        Assert.Equal("w", t.Name);
        Assert.Equal(DType.BF16, t.DType);
        Assert.Equal([2L, 3L], t.Shape.ToArray());
        Assert.Equal(12, t.ByteLength);
    }

    private static (RegisteredCheckpoint? Checkpoint, InvalidOperationException? Error) Outcome(Task<RegisteredCheckpoint> task)
    {
        try
        {
            return (task.GetAwaiter().GetResult(), null);
        }
        catch (InvalidOperationException e)
        {
            return (null, e);
        }
    }

    private static void AssertNothingLeft(CheckpointRegistry registry, string name)
    {
        Assert.False(registry.TryGet(name, out _));
        Assert.Empty(registry.Checkpoints);
        Assert.Equal(0, registry.Pool.LeasedBytes);
    }
}
