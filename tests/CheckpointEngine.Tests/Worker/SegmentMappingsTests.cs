using CheckpointEngine.Memory;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

/// <summary>The mappings a .NET receiver keeps between updates: kept while their segments exist, let go by the sweep once they are gone.</summary>
public sealed class SegmentMappingsTests : IDisposable
{
    private readonly string _address = "@" + SharedMemorySegment.NewName("test-socket");
    private readonly SharedMemorySegment _buffer = SharedMemorySegment.Create(SharedMemorySegment.NewName("test-buf"), 8192);
    private readonly SharedMemorySegment _owner = SharedMemorySegment.Create(SharedMemorySegment.NewName("test-reg"), 8192);

    public void Dispose()
    {
        SegmentMappings.Drop(_address);
        _buffer.Dispose();
        _owner.Dispose();
    }

    [Fact]
    public void Sweep_UnmapsWhatIsGone_NeverWhatAnUpdateUses()
    {
        var (buffer, registered) = SegmentMappings.Acquire(_address, _buffer.Name, _buffer.Size, [new SegmentRef(_owner.Name, _owner.Size)]);
        _owner.Dispose(); // Its owner unregistered it: the name is gone.
        SegmentMappings.SweepOnce();
        Assert.False(registered[0].IsDisposed); // In use by an update: left alone.

        SegmentMappings.Return(_address);
        SegmentMappings.SweepOnce();
        Assert.True(registered[0].IsDisposed);
        Assert.False(buffer.IsDisposed); // Still there: kept for the next update.
        Assert.Same(buffer, SegmentMappings.Acquire(_address, _buffer.Name, _buffer.Size, []).Buffer);

        SegmentMappings.Return(_address);
        _buffer.Dispose(); // The ranks exited (a one-shot update).
        SegmentMappings.SweepOnce();
        Assert.True(buffer.IsDisposed);
        Assert.DoesNotContain(_address, SegmentMappings.Addresses());
    }
}
