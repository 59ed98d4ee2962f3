using CheckpointEngine.Checkpoints;
using CsCheck;

namespace CheckpointEngine.Tests.Checkpoints;

/// <summary>A small sample checkpoint written once for all split tests.</summary>
public sealed class SampleCheckpointFixture : IDisposable
{
    private readonly TempDirectory _dir = new();

    public SampleCheckpointFixture()
    {
        Directory = System.IO.Path.Combine(_dir.Path, "sample");
        Files = SampleCheckpoint.Write(Directory, 1 << 16, shards: 5, layers: 5, seed: 3);
        Checkpoint = Checkpoint.Open(Directory);
    }

    public string Directory { get; }

    public IReadOnlyList<string> Files { get; }

    public Checkpoint Checkpoint { get; }

    public void Dispose()
    {
        Checkpoint.Dispose();
        _dir.Dispose();
    }
}

public sealed class CheckpointSplitTests(SampleCheckpointFixture sample) : IClassFixture<SampleCheckpointFixture>
{
    public static TheoryData<int> WorldSizes() => [1, 2, 3, 4, 5];

    [Theory]
    [MemberData(nameof(WorldSizes))]
    public void ByFile_CoversEveryFileOnce_AndBalances(int worldSize)
    {
        var files = Checkpoint.ResolveFiles(sample.Directory);
        var shares = Enumerable.Range(0, worldSize).Select(r => CheckpointSplit.ByFile(files, r, worldSize)).ToList();

        var all = shares.SelectMany(s => s).ToList();
        Assert.All(all, s => Assert.True(s.IsWholeFile));
        Assert.Equal(files.Order(StringComparer.Ordinal), all.Select(s => s.Path).Order(StringComparer.Ordinal));
        Assert.All(shares, s => Assert.Equal(s.Select(x => x.Path).Order(StringComparer.Ordinal), s.Select(x => x.Path)));

        var loads = shares.Select(s => s.Sum(x => new FileInfo(x.Path).Length)).ToList();
        Assert.True(loads.Max() - loads.Min() <= files.Max(f => new FileInfo(f).Length), $"loads {string.Join(", ", loads)}");
    }

    [Theory]
    [MemberData(nameof(WorldSizes))]
    public void ByTensor_CoversEveryTensorOnce_AndBalances(int worldSize)
    {
        var ckpt = sample.Checkpoint;
        var shares = Enumerable.Range(0, worldSize).Select(r => CheckpointSplit.ByTensor(ckpt, r, worldSize)).ToList();

        var picked = shares.SelectMany(s => s.SelectMany(sel => sel.Tensors!.Select(t => (sel.Path, Name: t)))).ToList();
        var expected = ckpt.AllTensors().Select(e => (e.File.Path, e.Tensor.Name)).ToList();
        Assert.Equal(expected.Count, picked.Count);
        Assert.Equal(expected.ToHashSet(), picked.ToHashSet());

        foreach (var share in shares)
        {
            Assert.All(share, sel => Assert.False(sel.IsWholeFile));
            Assert.All(share, sel => Assert.NotEmpty(sel.Tensors!));
            Assert.Equal(share.Count, share.Select(s => s.Path).Distinct().Count());
            Assert.Equal(share.Select(s => s.Path).Order(StringComparer.Ordinal), share.Select(s => s.Path));
            Assert.All(share, sel => Assert.Equal(sel.Tensors!.Order(StringComparer.Ordinal), sel.Tensors!));
        }

        long Bytes(FileSelection sel) => sel.Tensors!.Sum(n => { Assert.True(ckpt.TryGetTensor(n, out var f, out var t)); Assert.Equal(f.Path, sel.Path); return t.ByteLength; });
        var loads = shares.Select(s => s.Sum(Bytes)).ToList();
        var largest = expected.Max(e => { ckpt.TryGetTensor(e.Name, out _, out var t); return t.ByteLength; });
        Assert.True(loads.Max() - loads.Min() <= largest, $"loads {string.Join(", ", loads)}");
        Assert.Equal(ckpt.AllTensors().Sum(e => e.Tensor.ByteLength), loads.Sum());
    }

    [Theory]
    [MemberData(nameof(WorldSizes))]
    public void Splits_AreDeterministic(int worldSize)
    {
        var files = Checkpoint.ResolveFiles(sample.Directory);
        var reversed = files.Reverse().ToList();
        for (var r = 0; r < worldSize; r++)
        {
            var a = CheckpointSplit.ByFile(files, r, worldSize);
            Assert.Equal(a, CheckpointSplit.ByFile(files, r, worldSize));
            Assert.Equal(a, CheckpointSplit.ByFile(reversed, r, worldSize)); // Input order does not matter.

            var t1 = CheckpointSplit.ByTensor(sample.Checkpoint, r, worldSize);
            var t2 = CheckpointSplit.ByTensor(sample.Checkpoint, r, worldSize);
            Assert.Equal(t1.Select(s => s.Path), t2.Select(s => s.Path));
            Assert.Equal(t1.Select(s => string.Join("|", s.Tensors!)), t2.Select(s => string.Join("|", s.Tensors!)));
        }
    }

    [Fact]
    public void ByTensor_SameCheckpointOpenedTwice_GivesSameSplit()
    {
        using var again = Checkpoint.Open(sample.Directory);
        for (var r = 0; r < 3; r++)
        {
            var a = CheckpointSplit.ByTensor(sample.Checkpoint, r, 3);
            var b = CheckpointSplit.ByTensor(again, r, 3);
            Assert.Equal(a.Select(s => s.Path + ":" + string.Join("|", s.Tensors!)), b.Select(s => s.Path + ":" + string.Join("|", s.Tensors!)));
        }
    }

    [Fact]
    public void ByFile_DuplicateInputs_CountOnce()
    {
        var files = Checkpoint.ResolveFiles(sample.Directory);
        var doubled = files.Concat(files).ToList();
        var all = Enumerable.Range(0, 2).SelectMany(r => CheckpointSplit.ByFile(doubled, r, 2)).Select(s => s.Path).ToList();
        Assert.Equal(files.Order(StringComparer.Ordinal), all.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void ByFile_MoreRanksThanFiles_LeavesSomeRanksEmpty()
    {
        var files = Checkpoint.ResolveFiles(sample.Directory);
        var world = files.Count + 3;
        var shares = Enumerable.Range(0, world).Select(r => CheckpointSplit.ByFile(files, r, world)).ToList();
        Assert.Equal(files.Count, shares.Count(s => s.Count == 1));
        Assert.Equal(3, shares.Count(s => s.Count == 0));
    }

    [Theory]
    [InlineData(0, 0)]
    [InlineData(0, -1)]
    [InlineData(-1, 1)]
    [InlineData(1, 1)]
    [InlineData(3, 3)]
    [InlineData(7, 3)]
    [InlineData(int.MinValue, 2)]
    public void Split_BadRankOrWorld_Throws(int rank, int worldSize)
    {
        var files = Checkpoint.ResolveFiles(sample.Directory);
        Assert.Throws<ArgumentOutOfRangeException>(() => CheckpointSplit.ByFile(files, rank, worldSize));
        Assert.Throws<ArgumentOutOfRangeException>(() => CheckpointSplit.ByTensor(sample.Checkpoint, rank, worldSize));
    }

    [Fact]
    public void Balance_RandomSizes_CoversOnceAndBoundsImbalance()
    {
        Gen.Select(Gen.Long[0, 1_000_000].Array[0, 40], Gen.Int[1, 8]).Sample((sizes, world) =>
        {
            var items = sizes.Select((b, i) => ($"item{i:D3}", b)).ToList();
            var shares = CheckpointSplit.Balance(items, world, StringComparer.Ordinal);
            Assert.Equal(world, shares.Length);
            Assert.Equal(items.Select(x => x.Item1).Order(StringComparer.Ordinal), shares.SelectMany(s => s).Order(StringComparer.Ordinal));
            var bytes = items.ToDictionary(x => x.Item1, x => x.b);
            var loads = shares.Select(s => s.Sum(x => bytes[x])).ToList();
            Assert.True(loads.Max() - loads.Min() <= (sizes.Length == 0 ? 0 : sizes.Max()));
        }, iter: 100);
    }

    [Fact]
    public void Balance_EqualSizes_BreaksTiesByOrdinalKey()
    {
        // Ordinal: "B" (0x42) sorts before "a" (0x61), whatever the culture.
        var shares = CheckpointSplit.Balance([("a", 10L), ("B", 10L), ("c", 10L)], 3, StringComparer.Ordinal);
        Assert.Equal(["B"], shares[0]);
        Assert.Equal(["a"], shares[1]);
        Assert.Equal(["c"], shares[2]);
    }

    [Fact]
    public void Balance_LargestFirst_ToLeastLoaded()
    {
        var shares = CheckpointSplit.Balance([("s1", 1L), ("big", 10L), ("m", 6L), ("m2", 5L)], 2, StringComparer.Ordinal);
        // big → 0 (10), m → 1 (6), m2 → 1 (11), s1 → 0 (11).
        Assert.Equal(["big", "s1"], shares[0]);
        Assert.Equal(["m", "m2"], shares[1]);
    }
}
