using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

public unsafe class NativeBufferTests
{
    [Theory]
    [InlineData(0, 4096)]
    [InlineData(1, 4096)]
    [InlineData(4095, 4096)]
    [InlineData(4096, 4096)]
    [InlineData(4097, 8192)]
    [InlineData(3 << 20, 3 << 20)]
    public void Allocate_Capacity_IsRoundedUpToWholePages(long size, long capacity)
    {
        using var buffer = NativeBuffer.Allocate(size);
        Assert.Equal(capacity, buffer.Capacity);
        Assert.Equal(0, (long)buffer.Pointer % NativeBuffer.Alignment);
    }

    [Fact]
    public void Allocate_ZeroSize_GivesAUsablePage()
    {
        using var buffer = NativeBuffer.Allocate(0);
        Assert.False(buffer.IsDisposed);
        Assert.True(buffer.Pointer != null);
        buffer.AsSpan(0, (int)buffer.Capacity).Fill(0xAB);
        Assert.Equal(0xAB, buffer.Pointer[buffer.Capacity - 1]);
    }

    [Fact]
    public void Allocate_WholeCapacity_IsWritableAndStartsZeroed()
    {
        using var buffer = NativeBuffer.Allocate(10_000);
        var span = buffer.AsSpan(0, (int)buffer.Capacity);
        if (OperatingSystem.IsLinux())
        {
            Assert.True(span.IndexOfAnyExcept((byte)0) < 0, "a fresh anonymous mapping is zero-filled");
        }
        span.Fill(7);
        Assert.Equal(7, buffer.Pointer[0]);
        Assert.Equal(7, buffer.Pointer[buffer.Capacity - 1]);
    }

    [Fact]
    public void Allocate_NegativeSize_Throws() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => NativeBuffer.Allocate(-1));

    [Fact]
    public void Dispose_Twice_IsHarmless()
    {
        var buffer = NativeBuffer.Allocate(100);
        buffer.Dispose();
        buffer.Dispose();
        Assert.True(buffer.IsDisposed);
        Assert.Equal(4096, buffer.Capacity);
    }

    [Fact]
    public void Pointer_AfterDispose_Throws()
    {
        var buffer = NativeBuffer.Allocate(100);
        buffer.Dispose();
        Assert.Throws<ObjectDisposedException>(() => (nint)buffer.Pointer);
        Assert.Throws<ObjectDisposedException>(() => buffer.AsSpan(0, 1).Length);
    }

    [Fact]
    public void Dispose_ConcurrentCalls_FreeOnce()
    {
        for (var i = 0; i < 20; i++)
        {
            var buffer = NativeBuffer.Allocate(1 << 16);
            Parallel.For(0, 8, _ => buffer.Dispose());
            Assert.True(buffer.IsDisposed);
        }
    }

    [Fact]
    public void AsSpan_InsideCapacity_Works()
    {
        using var buffer = NativeBuffer.Allocate(4096);
        Assert.Equal(10, buffer.AsSpan(4086, 10).Length);
        Assert.Equal(0, buffer.AsSpan(4096, 0).Length);
        buffer.AsSpan(100, 3).Fill(9);
        Assert.Equal(9, buffer.Pointer[102]);
    }

    [Theory]
    [InlineData(4087, 10)]
    [InlineData(4097, 0)]
    [InlineData(-1, 1)]
    [InlineData(-4096, 10)]
    [InlineData(0, -1)]
    [InlineData(long.MaxValue, 10)]
    public void AsSpan_OutsideCapacity_Throws(long offset, int length)
    {
        using var buffer = NativeBuffer.Allocate(4096);
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.AsSpan(offset, length).Length);
    }
}
