using CheckpointEngine.Memory;

namespace CheckpointEngine.Tests.Memory;

public unsafe class HostMemoryPoolTests
{
    [Fact]
    public void Rent_EmptyPool_Allocates()
    {
        using var pool = new HostMemoryPool();
        var b = pool.Rent(5000);
        Assert.Equal(8192, b.Capacity);
        Assert.Equal(1, pool.Allocations);
        Assert.Equal(0, pool.Reuses);
        Assert.Equal(8192, pool.LeasedBytes);
        Assert.Equal(0, pool.IdleBytes);
        pool.Return(b);
        Assert.Equal(0, pool.LeasedBytes);
        Assert.Equal(8192, pool.IdleBytes);
        Assert.False(b.IsDisposed);
    }

    [Fact]
    public void Rent_AfterReturn_HandsBackTheSameBuffer()
    {
        using var pool = new HostMemoryPool();
        var b = pool.Rent(5000);
        var address = (nint)b.Pointer;
        pool.Return(b);
        var again = pool.Rent(6000);
        Assert.Same(b, again);
        Assert.Equal(address, (nint)again.Pointer);
        Assert.Equal(1, pool.Reuses);
        Assert.Equal(1, pool.Allocations);
        Assert.Equal(0, pool.IdleBytes);
        pool.Return(again);
    }

    [Fact]
    public void Rent_PicksTheSmallestIdleBufferThatFits()
    {
        using var pool = new HostMemoryPool();
        var big = pool.Rent(64 << 10);
        var mid = pool.Rent(16 << 10);
        var small = pool.Rent(4 << 10);
        pool.Return(big);
        pool.Return(mid);
        pool.Return(small);
        var got = pool.Rent(10 << 10);
        Assert.Same(mid, got);
        pool.Return(got);
    }

    [Fact]
    public void Rent_IdleBufferMoreThanTwiceTheSize_IsNotUsed()
    {
        using var pool = new HostMemoryPool();
        var big = pool.Rent(1 << 20);
        pool.Return(big);
        var small = pool.Rent(100 << 10);
        Assert.NotSame(big, small);
        Assert.Equal(2, pool.Allocations);
        Assert.Equal(0, pool.Reuses);
        Assert.Equal(1 << 20, pool.IdleBytes);
        pool.Return(small);
    }

    [Fact]
    public void Rent_IdleBufferTooSmall_IsNotUsed()
    {
        using var pool = new HostMemoryPool();
        var b = pool.Rent(4096);
        pool.Return(b);
        var bigger = pool.Rent(4097);
        Assert.NotSame(b, bigger);
        Assert.Equal(8192, bigger.Capacity);
        pool.Return(bigger);
    }

    [Fact]
    public void Rent_TinySizes_ShareOnePage()
    {
        using var pool = new HostMemoryPool();
        var b = pool.Rent(0);
        pool.Return(b);
        Assert.Same(b, pool.Rent(1));
        pool.Return(b);
        Assert.Same(b, pool.Rent(0));
        pool.Return(b);
    }

    [Fact]
    public void Trim_FreesIdleBuffers_LeavesLeasedOnes()
    {
        using var pool = new HostMemoryPool();
        var idle = pool.Rent(8192);
        var leased = pool.Rent(4096);
        pool.Return(idle);
        Assert.Equal(8192, pool.Trim());
        Assert.True(idle.IsDisposed);
        Assert.False(leased.IsDisposed);
        Assert.Equal(0, pool.IdleBytes);
        Assert.Equal(4096, pool.LeasedBytes);
        Assert.Equal(0, pool.Trim());
        pool.Return(leased);
    }

    [Fact]
    public void Return_AfterDispose_FreesTheBuffer()
    {
        var pool = new HostMemoryPool();
        var leased = pool.Rent(4096);
        var idle = pool.Rent(4096);
        pool.Return(idle);
        pool.Dispose();
        Assert.True(idle.IsDisposed);
        Assert.False(leased.IsDisposed);
        pool.Return(leased);
        Assert.True(leased.IsDisposed);
        Assert.Equal(0, pool.IdleBytes);
        Assert.Equal(0, pool.LeasedBytes);
        Assert.Throws<ObjectDisposedException>(() => pool.Rent(1));
        pool.Dispose();
    }

    [Fact]
    public void Return_Twice_IsRefused()
    {
        using var pool = new HostMemoryPool();
        var b = pool.Rent(4096);
        pool.Return(b);
        Assert.Throws<InvalidOperationException>(() => pool.Return(b));
        Assert.Equal(0, pool.LeasedBytes);
        Assert.Equal(4096, pool.IdleBytes);
        // Were it taken twice, two renters would now share one buffer.
        var first = pool.Rent(4096);
        var second = pool.Rent(4096);
        Assert.NotSame(first, second);
        pool.Return(first);
        pool.Return(second);
    }

    [Fact]
    public void Return_ForeignBuffer_IsRefused()
    {
        using var pool = new HostMemoryPool();
        using var foreign = NativeBuffer.Allocate(4096);
        Assert.Throws<InvalidOperationException>(() => pool.Return(foreign));
        Assert.Equal(0, pool.IdleBytes);
        Assert.Equal(0, pool.LeasedBytes);
    }

    [Fact]
    public void Return_DisposedBuffer_IsDroppedNotReused()
    {
        using var pool = new HostMemoryPool();
        var b = pool.Rent(4096);
        b.Dispose();
        pool.Return(b);
        Assert.Equal(0, pool.IdleBytes);
        Assert.Equal(0, pool.LeasedBytes);
        var fresh = pool.Rent(4096);
        Assert.False(fresh.IsDisposed);
        pool.Return(fresh);
    }

    [Fact]
    public void RentReturn_Concurrent_KeepsCountsConsistent()
    {
        using var pool = new HostMemoryPool();
        Parallel.For(0, 400, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            var b = pool.Rent(4096 * (1 + i % 3));
            b.Pointer[0] = (byte)i;
            pool.Return(b);
        });
        Assert.Equal(400, pool.Reuses + pool.Allocations);
        Assert.Equal(0, pool.LeasedBytes);
        Assert.Equal(pool.IdleBytes, pool.Trim());
    }
}
