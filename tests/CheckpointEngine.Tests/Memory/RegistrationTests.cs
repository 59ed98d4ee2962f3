using System.Runtime.InteropServices;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

/// <summary>Registered bytes equal the source bytes, whatever the source and however the buffers are cut.</summary>
public unsafe class RegistrationTests(RegistrationFixture fixture) : IClassFixture<RegistrationFixture>
{
    private static readonly RegisterOptions Small = new() { MaxBufferSize = 4096, CopyThreads = 4 };

    [Fact]
    public void RegisterCheckpoint_Files_BytesEqualSource()
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("ckpt", fixture.Files, options: Small);
        MemoryTestData.AssertHolds(c, fixture.All);
        // The 40 MiB tensor raises the limit to its own size, so the rest packs into buffers that large.
        Assert.True(c.Buffers.Count >= 2, $"got {c.Buffers.Count} buffers");
        Assert.All(c.Buffers, b => Assert.InRange(b.Size, 0, RegistrationFixture.BigBytes));
        Assert.All(c.Buffers, b => Assert.Equal(MemoryBufferKind.Owned, b.Kind));
        Assert.Equal(fixture.All.Sum(t => (long)t.Data.Length), c.CopiedBytes);
        Assert.Equal(c.Buffers.Sum(b => b.Size), c.BufferBytes);
        Assert.Empty(c.InPlaceFiles);
        Assert.Equal(0, c.PoolReuses);
        Assert.Equal("ckpt", c.Name);
        Assert.True(registry.TryGet("ckpt", out var got));
        Assert.Same(c, got);
    }

    [Fact]
    public void RegisterCheckpoint_SmallLimit_CutsManyBuffers()
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("small", fixture.Files.Take(2), options: Small);
        MemoryTestData.AssertHolds(c, fixture.Mixed.Concat(fixture.Tiny));
        Assert.True(c.Buffers.Count > 5, $"a 4 KiB limit should cut many buffers, got {c.Buffers.Count}");
        Assert.All(c.Buffers, b => Assert.InRange(b.Size, 1, 4096));
    }

    [Fact]
    public void RegisterCheckpoint_BigTensor_GetsItsOwnBufferAcrossCopyChunks()
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("big", fixture.Files.Skip(2), options: Small);
        MemoryTestData.AssertHolds(c, fixture.Big);
        var home = Assert.Single(c.Buffers, b => b.Metas.Any(m => m.Name == "big.weight"));
        Assert.Equal(RegistrationFixture.BigBytes, home.Size);
    }

    [Fact]
    public void RegisterCheckpoint_Directory_BytesEqualSource()
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("dir", [fixture.Directory], options: Small);
        MemoryTestData.AssertHolds(c, fixture.All);
    }

    [Fact]
    public void RegisterCheckpoint_DefaultOptions_OneBuffer()
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("default", fixture.Selections);
        MemoryTestData.AssertHolds(c, fixture.All);
        Assert.Single(c.Buffers);
    }

    [Fact]
    public void RegisterCheckpoint_ByTensorSplit_RanksTogetherHoldEverything()
    {
        using var registry = new CheckpointRegistry();
        using var checkpoint = Checkpoint.Open(fixture.Files);
        const int world = 3;
        var seen = new List<string>();
        for (var rank = 0; rank < world; rank++)
        {
            var selection = CheckpointSplit.ByTensor(checkpoint, rank, world);
            Assert.Contains(selection, s => !s.IsWholeFile);
            var wanted = selection.SelectMany(s => s.Tensors!).ToHashSet(StringComparer.Ordinal);
            var c = registry.RegisterCheckpoint($"rank{rank}", selection, options: Small);
            MemoryTestData.AssertHolds(c, fixture.All.Where(t => wanted.Contains(t.Name)));
            Assert.Equal(c.TensorBytes, c.CopiedBytes);
            seen.AddRange(wanted);
        }
        Assert.Equal(fixture.All.Select(t => t.Name).Order(StringComparer.Ordinal), seen.Order(StringComparer.Ordinal));
        Assert.Equal(["rank0", "rank1", "rank2"], registry.Checkpoints.Select(c => c.Name));
    }

    [Fact]
    public void RegisterCheckpoint_PartialSelections_OnlySelectedTensors()
    {
        using var registry = new CheckpointRegistry();
        var fromMixed = fixture.Mixed.Where((_, i) => i % 2 == 0).ToList();
        var fromTiny = fixture.Tiny.Skip(40).Take(30).ToList();
        var c = registry.RegisterCheckpoint("partial",
        [
            new FileSelection(fixture.Files[0], [.. fromMixed.Select(t => t.Name)]),
            new FileSelection(fixture.Files[1], [.. fromTiny.Select(t => t.Name).Reverse()]),
            new FileSelection(fixture.Files[2], []),
        ], options: Small);
        MemoryTestData.AssertHolds(c, fromMixed.Concat(fromTiny));
    }

    [Fact]
    public void RegisterCheckpoint_NamedTensorsWithFiles_BytesEqualSource()
    {
        var named = MemoryTestData.Mixed("trainer.", seed: 5000).Concat(MemoryTestData.Tiny("trainer.tiny.", 40, seed: 6000)).ToList();
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("mixed", fixture.Selections.Take(2), named.Select(t => t.ToNamed()), Small);
        MemoryTestData.AssertHolds(c, fixture.Mixed.Concat(fixture.Tiny).Concat(named));
    }

    [Fact]
    public void RegisterCheckpoint_NamedTensorsOnly_BytesEqualSource()
    {
        var named = MemoryTestData.Mixed("", seed: 77);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("memory", Array.Empty<string>(), named.Select(t => t.ToNamed()), Small);
        MemoryTestData.AssertHolds(c, named);
    }

    [Fact]
    public void RegisterCheckpoint_NamedTensorSlices_CopyOnlyTheSlice()
    {
        var backing = MemoryTestData.Tensor("backing", DType.U8, [1000], seed: 3).Data;
        var slice = backing.AsMemory(100, 4 * 60);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("slice", Array.Empty<string>(), [new NamedTensor("w", DType.F32, [6, 10], slice)]);
        MemoryTestData.AssertHolds(c, [new TensorSpec("w", DType.F32, [6, 10], slice.ToArray())]);
    }

    [Fact]
    public void RegisterCheckpoint_FromPointer_CopiesNativeMemory()
    {
        var specs = new[]
        {
            MemoryTestData.Tensor("native.weight", DType.BF16, [300, 7], seed: 11),
            MemoryTestData.Tensor("native.scalar", DType.F64, [], seed: 12),
            MemoryTestData.Tensor("native.large", DType.U8, [(17 << 20) + 3], seed: 13),
        };
        var pointers = specs.Select(s => (nint)NativeMemory.Alloc((nuint)s.Data.Length)).ToArray();
        try
        {
            var named = new List<NamedTensor>();
            for (var i = 0; i < specs.Length; i++)
            {
                specs[i].Data.CopyTo(new Span<byte>((void*)pointers[i], specs[i].Data.Length));
                named.Add(NamedTensor.FromPointer(specs[i].Name, specs[i].DType, specs[i].Shape, pointers[i], specs[i].Data.Length));
            }
            named.Add(NamedTensor.FromPointer("native.empty", DType.F32, [0, 3], 0, 0));
            using var registry = new CheckpointRegistry();
            var c = registry.RegisterCheckpoint("native", fixture.Selections.Take(1), named, Small);

            // The source is not referenced after registration.
            foreach (var (p, s) in pointers.Zip(specs))
            {
                new Span<byte>((void*)p, s.Data.Length).Fill(0xEE);
            }
            MemoryTestData.AssertHolds(c, specs.Append(new TensorSpec("native.empty", DType.F32, [0, 3], [])).Concat(fixture.Mixed));
        }
        finally
        {
            foreach (var p in pointers)
            {
                NativeMemory.Free((void*)p);
            }
        }
    }

    [Fact]
    public void RegisterCheckpoint_InMemorySourceChangedAfterwards_RegisteredBytesKept()
    {
        var spec = MemoryTestData.Tensor("w", DType.F32, [100], seed: 9);
        var data = spec.Data.ToArray();
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("copy", Array.Empty<string>(), [new NamedTensor("w", DType.F32, [100], data)]);
        Array.Clear(data);
        MemoryTestData.AssertHolds(c, [spec]);
    }

    [Theory]
    [InlineData(1, 4096)]
    [InlineData(4, 4096)]
    [InlineData(1, 1 << 20)]
    [InlineData(4, 1 << 20)]
    public void RegisterCheckpoint_CopyThreadsAndLimits_SameBytes(int threads, long limit)
    {
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("t", fixture.Files, options: new RegisterOptions { CopyThreads = threads, MaxBufferSize = limit });
        MemoryTestData.AssertHolds(c, fixture.All);
        Assert.All(c.Buffers, b => Assert.True(b.Size <= Math.Max(limit, RegistrationFixture.BigBytes)));
    }

    [Fact]
    public void RegisterCheckpoint_OneThreadAndFour_IdenticalLayoutAndBytes()
    {
        using var registry = new CheckpointRegistry();
        var one = registry.RegisterCheckpoint("one", fixture.Files, options: Small with { CopyThreads = 1 });
        var four = registry.RegisterCheckpoint("four", fixture.Files, options: Small with { CopyThreads = 4 });
        Assert.Equal(MemoryTestData.Layout(one), MemoryTestData.Layout(four));
        foreach (var (a, b) in one.Buffers.Zip(four.Buffers))
        {
            Assert.True(new ReadOnlySpan<byte>(a.Pointer, (int)a.Size).SequenceEqual(new ReadOnlySpan<byte>(b.Pointer, (int)b.Size)));
        }
    }

    [Fact]
    public void RegisterCheckpoint_SameLayoutFromFilesOrMemory_IdenticalLayout()
    {
        // Layout depends on names, dtypes and shapes only, not on where the bytes come from.
        using var registry = new CheckpointRegistry();
        var fromFiles = registry.RegisterCheckpoint("files", fixture.Selections.Take(2), options: Small);
        var fromMemory = registry.RegisterCheckpoint("memory", Array.Empty<string>(), fixture.Mixed.Concat(fixture.Tiny).Select(t => t.ToNamed()), Small);
        Assert.Equal(MemoryTestData.Layout(fromFiles), MemoryTestData.Layout(fromMemory));
    }

    [Fact]
    public void Checkpoints_ListedByName()
    {
        using var registry = new CheckpointRegistry();
        foreach (var name in new[] { "b", "a", "c" })
        {
            registry.RegisterCheckpoint(name, fixture.Selections.Take(1), options: Small);
        }
        Assert.Equal(["a", "b", "c"], registry.Checkpoints.Select(c => c.Name));
        Assert.True(registry.UnregisterCheckpoint("b"));
        Assert.Equal(["a", "c"], registry.Checkpoints.Select(c => c.Name));
        Assert.False(registry.TryGet("b", out _));
    }
}
