using System.Buffers.Binary;
using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Interop;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

/// <summary>Files on tmpfs serve as their own buffers; everything else is copied.</summary>
public sealed class InPlaceTests : IDisposable
{
    private static readonly RegisterOptions InPlace = new() { InPlace = true, MaxBufferSize = 4096, CopyThreads = 4 };

    private readonly TempDirectory _shm = TempDirectory.InShm();
    private readonly TempDirectory _disk = TempDirectory.OnDisk();
    private readonly List<TensorSpec> _mixed = MemoryTestData.Mixed("model.", seed: 1);
    private readonly List<TensorSpec> _tiny = MemoryTestData.Tiny("tiny.", 50, seed: 2);

    public void Dispose()
    {
        _shm.Dispose();
        _disk.Dispose();
    }

    private string WriteShm(string name, IEnumerable<TensorSpec> tensors)
    {
        var path = _shm.File(name);
        MemoryTestData.Write(path, tensors);
        return path;
    }

    [Fact]
    public void IsOnTmpfs_TellsShmFromDisk()
    {
        Assert.True(Libc.IsOnTmpfs(_shm.Path));
        Assert.False(Libc.IsOnTmpfs(_disk.Path));
        Assert.False(Libc.IsOnTmpfs(_shm.File("does-not-exist")));
    }

    [Fact]
    public void RegisterCheckpoint_TmpfsFiles_MappedWithoutCopy()
    {
        var a = WriteShm("a.safetensors", _mixed);
        var b = WriteShm("b.safetensors", _tiny);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("shm", [a, b], options: InPlace);

        Assert.Equal(0, c.CopiedBytes);
        Assert.Equal([a, b], c.InPlaceFiles);
        Assert.Equal(2, c.Buffers.Count);
        Assert.All(c.Buffers, x => Assert.Equal(MemoryBufferKind.InPlace, x.Kind));
        MemoryTestData.AssertHolds(c, _mixed.Concat(_tiny));
        Assert.True(File.Exists(a));
        Assert.True(File.Exists(b));

        Assert.True(registry.UnregisterCheckpoint("shm"));
        Assert.True(File.Exists(a));
        Assert.True(File.Exists(b));
        Assert.Equal(0, registry.Pool.Allocations);
    }

    [Fact]
    public void RegisterCheckpoint_InPlaceBuffer_IsTheFilesDataSection()
    {
        var a = WriteShm("a.safetensors", _mixed);
        using var file = SafeTensorsFile.Open(a);
        using var registry = new CheckpointRegistry();
        var buffer = Assert.Single(registry.RegisterCheckpoint("shm", [a], options: InPlace).Buffers);
        Assert.Equal(file.DataLength, buffer.Size);
        Assert.All(buffer.Metas, m => Assert.Equal(file[m.Name].DataOffset, m.Offset));
        // Naturally aligned in the mapping, as the dtypes need.
        Assert.All(buffer.Metas, m => Assert.Equal(0, (buffer.Address + m.Offset) % m.DType.Alignment()));
    }

    [Fact]
    public void RegisterCheckpoint_DeleteInPlaceFiles_UnlinksButKeepsDataUntilUnregister()
    {
        var a = WriteShm("a.safetensors", _mixed);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("shm", [a], options: InPlace with { DeleteInPlaceFiles = true });
        Assert.False(File.Exists(a));
        Assert.Equal([a], c.InPlaceFiles);
        Assert.Equal(0, c.CopiedBytes);
        MemoryTestData.AssertHolds(c, _mixed);
        Assert.True(registry.UnregisterCheckpoint("shm"));
        Assert.True(c.IsReleased);
    }

    [Fact]
    public void RegisterCheckpoint_DeleteInPlaceFiles_FailedRegistrationDeletesNothing()
    {
        var a = WriteShm("a.safetensors", _mixed);
        using var registry = new CheckpointRegistry();
        var clash = _mixed[0].ToNamed();
        Assert.Throws<CheckpointFormatException>(() => registry.RegisterCheckpoint("shm", [a], [clash], InPlace with { DeleteInPlaceFiles = true }));
        Assert.True(File.Exists(a));
        Assert.Empty(registry.Checkpoints);
    }

    [Fact]
    public void RegisterCheckpoint_DeleteInPlaceFiles_LeavesCopiedFilesAlone()
    {
        var disk = _disk.File("disk.safetensors");
        MemoryTestData.Write(disk, _tiny);
        using var registry = new CheckpointRegistry();
        registry.RegisterCheckpoint("mixed", [disk], options: InPlace with { DeleteInPlaceFiles = true });
        Assert.True(File.Exists(disk));
    }

    [Fact]
    public void RegisterCheckpoint_DiskFiles_CopiedEvenWithInPlace()
    {
        var disk = _disk.File("disk.safetensors");
        MemoryTestData.Write(disk, _tiny);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("disk", [disk], options: InPlace);
        Assert.Empty(c.InPlaceFiles);
        Assert.Equal(_tiny.Sum(t => (long)t.Data.Length), c.CopiedBytes);
        Assert.All(c.Buffers, b => Assert.Equal(MemoryBufferKind.Owned, b.Kind));
        MemoryTestData.AssertHolds(c, _tiny);
    }

    [Fact]
    public void RegisterCheckpoint_TmpfsDiskAndMemory_OnlyTmpfsMapped()
    {
        var shm = WriteShm("a.safetensors", _mixed);
        var disk = _disk.File("b.safetensors");
        MemoryTestData.Write(disk, _tiny);
        var named = MemoryTestData.Tiny("trainer.", 10, seed: 3);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("mixed", [shm, disk], named.Select(t => t.ToNamed()), InPlace with { UsePool = true });

        Assert.Equal([shm], c.InPlaceFiles);
        Assert.Equal(_tiny.Concat(named).Sum(t => (long)t.Data.Length), c.CopiedBytes);
        Assert.Single(c.Buffers, b => b.Kind == MemoryBufferKind.InPlace);
        Assert.All(c.Buffers.Where(b => b.Kind != MemoryBufferKind.InPlace), b => Assert.Equal(MemoryBufferKind.Pooled, b.Kind));
        MemoryTestData.AssertHolds(c, _mixed.Concat(_tiny).Concat(named));

        var copiedBuffers = c.Buffers.Count(b => b.Kind == MemoryBufferKind.Pooled);
        Assert.Equal(copiedBuffers, registry.Pool.Allocations);
        registry.UnregisterCheckpoint("mixed");
        Assert.Equal(0, registry.Pool.LeasedBytes);
        Assert.True(File.Exists(shm));
    }

    [Fact]
    public void RegisterCheckpoint_PartialSelectionOfTmpfsFile_Copied()
    {
        var a = WriteShm("a.safetensors", _mixed);
        var b = WriteShm("b.safetensors", _tiny);
        var some = _mixed.Take(4).ToList();
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("partial",
            [new FileSelection(a, [.. some.Select(t => t.Name)]), new FileSelection(b)], options: InPlace with { DeleteInPlaceFiles = true });

        Assert.Equal([b], c.InPlaceFiles);
        Assert.Equal(some.Sum(t => (long)t.Data.Length), c.CopiedBytes);
        MemoryTestData.AssertHolds(c, some.Concat(_tiny));
        Assert.True(File.Exists(a), "a file only partly registered is copied, never deleted");
        Assert.False(File.Exists(b));
    }

    [Fact]
    public void RegisterCheckpoint_TmpfsWithoutInPlace_Copied()
    {
        var a = WriteShm("a.safetensors", _mixed);
        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("copy", [a], options: InPlace with { InPlace = false, DeleteInPlaceFiles = true });
        Assert.Empty(c.InPlaceFiles);
        Assert.Equal(c.TensorBytes, c.CopiedBytes);
        Assert.All(c.Buffers, b => Assert.Equal(MemoryBufferKind.Owned, b.Kind));
        MemoryTestData.AssertHolds(c, _mixed);
        Assert.True(File.Exists(a));
    }

    [Fact]
    public void RegisterCheckpoint_MisalignedTmpfsFile_Copied()
    {
        // A valid file whose F32 tensor starts at an odd data offset: it cannot be used where it lies.
        var path = _shm.File("odd.safetensors");
        var json = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        while ((8 + json.Length) % 4 != 2)
        {
            json += " ";
        }
        var header = Encoding.UTF8.GetBytes(json);
        var data = MemoryTestData.Tensor("x", DType.F32, [2], seed: 4).Data;
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        File.WriteAllBytes(path, bytes);

        using var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("odd", [path], options: InPlace);
        Assert.Empty(c.InPlaceFiles);
        Assert.Equal(8, c.CopiedBytes);
        MemoryTestData.AssertHolds(c, [new TensorSpec("x", DType.F32, [2], data)]);
    }

    [Fact]
    public void RegisterCheckpoint_SameTmpfsFileInTwoCheckpoints_BothMapped()
    {
        var a = WriteShm("a.safetensors", _mixed);
        using var registry = new CheckpointRegistry();
        var one = registry.RegisterCheckpoint("one", [a], options: InPlace);
        var two = registry.RegisterCheckpoint("two", [a], options: InPlace);
        registry.UnregisterCheckpoint("one");
        MemoryTestData.AssertHolds(two, _mixed);
        Assert.True(one.IsReleased);
    }

    [Fact]
    public void Dispose_UnmapsInPlaceFiles()
    {
        var a = WriteShm("a.safetensors", _mixed);
        var registry = new CheckpointRegistry();
        var c = registry.RegisterCheckpoint("shm", [a], options: InPlace with { DeleteInPlaceFiles = true });
        registry.Dispose();
        Assert.True(c.IsReleased);
        Assert.False(File.Exists(a));
    }
}
