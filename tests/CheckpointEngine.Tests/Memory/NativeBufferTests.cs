using System.Collections.Concurrent;
using System.Globalization;
using CheckpointEngine.Interop;
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

    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);

    /// <summary>Linux: map only where nothing is mapped (kernels before 4.17 take the address as a hint).</summary>
    private const int MapFixedNoReplace = 0x100000;

    /// <summary>Whether [address, address + length) lies inside one mapping of this process.</summary>
    private static bool IsMapped(nint address, long length) =>
        File.ReadLines("/proc/self/maps").Select(l => l[..l.IndexOf(' ', StringComparison.Ordinal)].Split('-')).Any(r =>
            long.Parse(r[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture) <= address
            && address + length <= long.Parse(r[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture));

    [Fact]
    public void Dispose_ConcurrentCalls_UnmapOnce()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "NativeBuffer maps memory on Linux only");
        const int Iterations = 20;
        const int Threads = 8;
        var landed = 0;
        for (var i = 0; i < Iterations; i++)
        {
            var buffer = NativeBuffer.Allocate(1 << 16);
            var (address, length) = (buffer.Address, buffer.Capacity);
            Assert.True(IsMapped(address, length));

            // Every thread disposes, then maps anew at the buffer's address without replacing anything there.
            // That succeeds once the buffer's mapping is gone, for one thread; a second munmap of the address
            // would remove it and let another thread map there too.
            var mappings = new ConcurrentBag<nint>();
            using var start = new Barrier(Threads);
            void DisposeAndMap()
            {
                _ = start.SignalAndWait(Deadline);
                buffer.Dispose();
                var p = Libc.mmap(address, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | MapFixedNoReplace, -1, 0);
                if (p != Libc.MAP_FAILED)
                {
                    mappings.Add(p);
                }
            }
            var threads = Enumerable.Range(0, Threads).Select(_ => new Thread(DisposeAndMap)).ToList();
            threads.ForEach(t => t.Start());
            try
            {
                Assert.All(threads, t => Assert.True(t.Join(Deadline), "a Dispose call hung"));
                Assert.True(buffer.IsDisposed);
                var here = mappings.Count(p => p == address);
                Assert.True(here <= 1, $"{here} threads mapped at the buffer's address: its mapping was unmapped again after one of them");
                if (here == 1)
                {
                    landed++;
                    new Span<byte>((void*)address, (int)length).Fill(0x5A);
                    buffer.Dispose();
                    buffer.Dispose();
                    Assert.True(IsMapped(address, length), "a late Dispose unmapped memory the buffer no longer owns");
                    Assert.Equal(0x5A, ((byte*)address)[length - 1]);
                }
            }
            finally
            {
                foreach (var p in mappings)
                {
                    _ = Libc.munmap(p, (nuint)length);
                }
            }
        }
        // Mapping at the address fails only while something is mapped there: the buffer, or rarely an
        // allocation of another test that took the hole first.
        Assert.True(landed >= Iterations / 2, $"the buffer's address was free after Dispose in only {landed} of {Iterations} runs");
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
