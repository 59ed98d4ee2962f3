using CheckpointEngine.Memory;

namespace CheckpointEngine.Runtime.Devices;

/// <summary>A host-backend device buffer: a shared-memory segment the worker opens by name.</summary>
public sealed class HostDeviceBuffer(SharedMemorySegment segment) : DeviceBuffer
{
    public SharedMemorySegment Segment { get; } = segment;

    public override nint Address => Segment.Address;

    public override long Size => Segment.Size;

    public override string Kind => "shm";

    public override string Handle => Segment.Name;

    public override SharedMemorySegment SharedSegment => Segment;

    protected override void Dispose(bool disposing) => Segment.Dispose();
}
