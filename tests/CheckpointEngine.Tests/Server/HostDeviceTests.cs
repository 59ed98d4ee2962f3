using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Tests.Server;

public class HostDeviceTests
{
    [Fact]
    public unsafe void AllocateShared_IsASegmentTheWorkerCanOpenByName()
    {
        using var device = new HostDevice("test-device", freeMemory: 1 << 20);
        Assert.Equal(1 << 20, device.FreeMemory);
        using var buffer = device.AllocateShared(8192);
        Assert.Equal("shm", buffer.Kind);
        using var peer = CheckpointEngine.Memory.SharedMemorySegment.Open(buffer.Handle);
        var source = new byte[] { 1, 2, 3, 42 };
        fixed (byte* p = source)
        {
            device.CopyHostToDevice([new HostCopy((nint)p, buffer.Address + 97, source.Length)]);
        }
        Assert.Equal(42, peer.Pointer[100]); // The worker's mapping sees the copy.
    }

    [Fact]
    public void FreeMemory_FromEnvironment_BadValueIsNamed()
    {
        var e = Assert.Throws<CheckpointEngineException>(() => RankConfig.FromEnvironment(new Dictionary<string, string> { [RankConfig.HostDeviceMemoryVariable] = "lots" }));
        Assert.Contains("CKPT_ENGINE_HOST_DEVICE_MEMORY_GB=lots", e.Message);
        Assert.Equal(3L << 30, RankConfig.FromEnvironment(new Dictionary<string, string> { [RankConfig.HostDeviceMemoryVariable] = "3" }).HostDeviceMemory);
    }
}
