using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Collectives;
using CheckpointEngine.Runtime.Devices;

namespace CheckpointEngine.Tests.Gpu;

/// <summary>The CUDA device and NCCL on a real GPU; skipped where there is none (the GPU check runs them).</summary>
[Trait("Category", "GPU")]
public sealed class CudaDeviceTests
{
    private static void RequireGpu() => Assert.SkipUnless(CudaDriver.HasDevice(), "no CUDA device on this machine");

    [Fact]
    public unsafe void Device_CopiesHostBytesIntoItsSharedBuffer()
    {
        RequireGpu();
        using var device = new CudaDevice(0);
        Assert.StartsWith("GPU-", device.Id, StringComparison.Ordinal);
        Assert.True(device.FreeMemory > 1 << 20);
        Assert.False(device.HostAccessible);
        const int size = 3 << 20;
        using var host = CheckpointEngine.Memory.NativeBuffer.Allocate(size);
        new Random(7).NextBytes(new Span<byte>(host.Pointer, size));
        device.RegisterHostMemory(host.Address, host.Capacity);
        device.RegisterHostMemory(host.Address, host.Capacity); // Twice: counted, not "already registered".
        CudaDriver.Instance.SetCurrent(device.Context);
        Assert.False(CudaDriver.Instance.HostRegister(host.Address, host.Capacity)); // Locked already (by anyone): not an error.
        using var buffer = device.AllocateShared(size + 4096);
        Assert.Equal("cuda-ipc", buffer.Kind);
        Assert.Equal(64, Convert.FromBase64String(buffer.Handle).Length);
        device.CopyHostToDevice([new HostCopy(host.Address, buffer.Address + 4096, 1 << 20), new HostCopy(host.Address + (1 << 20), buffer.Address + 4096 + (1 << 20), size - (1 << 20))]);
        var back = new byte[size];
        fixed (byte* p = back)
        {
            CudaDriver.Instance.SetCurrent(device.Context);
            CudaDriver.Instance.CopyDeviceToHost((nint)p, (ulong)buffer.Address + 4096, size);
        }
        Assert.True(new ReadOnlySpan<byte>(host.Pointer, size).SequenceEqual(back));
        device.UnregisterHostMemory(host.Address);
        device.UnregisterHostMemory(host.Address);
        device.UnregisterHostMemory(host.Address); // Once too often: nothing to undo, no error.
    }

    [Fact]
    public async Task Nccl_OneRankBroadcastsAndReduces()
    {
        RequireGpu();
        var ct = TestContext.Current.CancellationToken;
        await using var world = await World.JoinAsync(new RankConfig(), ct);
        using var backend = await Backend.CreateAsync(world, DeviceKind.Cuda, TimeSpan.FromSeconds(60), ct: ct);
        Assert.IsType<NcclCommunicator>(backend.Group);
        using var buffer = backend.Device.AllocateShared(1 << 20);
        await backend.Group.BroadcastAsync(buffer.Address, 1 << 20, 0, TimeSpan.FromSeconds(30), ct);
        var reduced = await backend.Group.AllReduceAsync([5, -3], ReduceOp.Max, TimeSpan.FromSeconds(30), ct);
        Assert.Equal(new long[] { 5, -3 }, reduced);
        using var sub = await backend.Group.CreateSubGroupAsync("sub", [0], TimeSpan.FromSeconds(60), ct);
        await sub.BroadcastAsync(buffer.Address, 4096, 0, TimeSpan.FromSeconds(30), ct);
    }
}
