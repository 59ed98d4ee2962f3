using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Tests.Server;

public sealed class DeviceBufferDisposeTests
{
    /// <summary>Counts how often its memory would be freed.</summary>
    private sealed class CountingBuffer : DeviceBuffer
    {
        public int Frees;

        public override nint Address => 0;

        public override long Size => 0;

        public override string Kind => "test";

        public override string Handle => "";

        protected override void Dispose(bool disposing) => Interlocked.Increment(ref Frees);
    }

    [Fact]
    public async Task Dispose_ManyConcurrentCalls_FreeTheMemoryOnce()
    {
        var buffer = new CountingBuffer();
        using var start = new Barrier(4);
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
        {
            start.SignalAndWait(TestContext.Current.CancellationToken);
            buffer.Dispose();
            buffer.Dispose();
        })));
        Assert.Equal(1, buffer.Frees);
    }

    [Fact]
    public void HostDeviceBuffer_DisposedTwice_UnlinksItsSegmentOnce()
    {
        using var device = new HostDevice($"dispose-test-{Guid.NewGuid():N}", freeMemory: 1 << 20);
        var buffer = device.AllocateShared(4096);
        var path = Path.Combine(CheckpointEngine.Memory.SharedMemorySegment.Directory, buffer.Handle);
        Assert.True(File.Exists(path));
        buffer.Dispose();
        buffer.Dispose();
        Assert.False(File.Exists(path));
    }
}
