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

    /// <summary>
    /// A shard-aware member's part cut out of a broadcast on the device: the rows of a column slice (one strided copy), a whole
    /// tensor, and a run that overlaps itself (through the scratch buffer), in place as on a receiving rank and into another
    /// slot as on the stager; the bytes equal the same runs applied on the host.
    /// </summary>
    [Fact]
    public async Task Nccl_CutsAPartOutOfABroadcast_OnTheDevice()
    {
        RequireGpu();
        var ct = TestContext.Current.CancellationToken;
        await using var world = await World.JoinAsync(new RankConfig(), ct);
        using var backend = await Backend.CreateAsync(world, DeviceKind.Cuda, TimeSpan.FromSeconds(60), ct: ct);
        const int size = 1 << 20, half = size / 2;
        using var buffer = backend.Device.AllocateShared(size);
        var runs = Enumerable.Range(0, 64).Select(r => new CheckpointEngine.Memory.ByteRun(1000 + r * 300 + 100, r * 100, 100)) // Columns [100, 200) of a 64 × 300-byte matrix.
            .Append(new CheckpointEngine.Memory.ByteRun(20_200, 6_400, 5_000))   // A whole tensor.
            .Append(new CheckpointEngine.Memory.ByteRun(30_000, 29_000, 200_000)) // Moved back by less than its length: it overlaps itself.
            .ToList();
        var original = new byte[size];
        new Random(11).NextBytes(original);
        var device = (CudaDevice)backend.Device;

        async Task<byte[]> Cut(nint destination)
        {
            Upload(device, original, buffer.Address);
            await backend.Group.BroadcastPartAsync(buffer.Address, half, 0, runs, destination, TimeSpan.FromSeconds(30), ct);
            return Download(device, buffer.Address, size);
        }

        var inPlace = await Cut(buffer.Address); // As a receiving rank cuts its part.
        Assert.Equal(OnHost(original, runs, 0), inPlace);
        var intoSlot = await Cut(buffer.Address + half); // As the stager gathers its worker's part.
        Assert.Equal(OnHost(original, runs, half), intoSlot);
    }

    /// <summary>
    /// NCCL's grouped point-to-point calls on one GPU: a one-rank communicator sends a buffer to itself and receives it in one
    /// <c>ncclGroupStart</c>/<c>ncclGroupEnd</c> (the non-blocking communicator's group end may return in progress: polled); then the
    /// communicator's scatter on one rank, which cuts the root's own part on the device (strided rows, a whole tensor) as the host would.
    /// </summary>
    [Fact]
    public async Task Nccl_OneRankGroup_SendsToItself_AndScattersItsOwnPart()
    {
        RequireGpu();
        var ct = TestContext.Current.CancellationToken;
        await using var world = await World.JoinAsync(new RankConfig(), ct);
        using var backend = await Backend.CreateAsync(world, DeviceKind.Cuda, TimeSpan.FromSeconds(60), ct: ct);
        var device = (CudaDevice)backend.Device;
        const int size = 1 << 20;
        using var from = device.AllocateShared(size);
        using var into = device.AllocateShared(size);
        var original = new byte[size];
        new Random(5).NextBytes(original);
        Upload(device, original, from.Address);

        var (nccl, cuda) = (Interop.Nccl.Nccl.Instance, CudaDriver.Instance);
        cuda.SetCurrent(device.Context);
        var stream = cuda.CreateStream();
        var done = cuda.CreateEvent();
        var comm = nccl.StartInit(1, nccl.UniqueId(), 0);
        try
        {
            await Until(() => nccl.AsyncError(comm) != Interop.Nccl.Nccl.InProgress, "init");
            Assert.Equal(Interop.Nccl.Nccl.Success, nccl.AsyncError(comm));
            cuda.SetCurrent(device.Context);
            nccl.GroupStart();
            nccl.Send(from.Address, size, 0, comm, stream);
            nccl.Receive(into.Address, size, 0, comm, stream);
            var end = nccl.GroupEnd(comm);
            Assert.True(end is Interop.Nccl.Nccl.Success or Interop.Nccl.Nccl.InProgress, $"ncclGroupEnd returned {end}");
            await Until(() => nccl.AsyncError(comm) != Interop.Nccl.Nccl.InProgress, "the group");
            Assert.Equal(Interop.Nccl.Nccl.Success, nccl.AsyncError(comm));
            cuda.SetCurrent(device.Context);
            cuda.Record(done, stream);
            await Until(() => { cuda.SetCurrent(device.Context); return cuda.IsDone(done); }, "the stream");
            Assert.Equal(original, Download(device, into.Address, size));
        }
        finally
        {
            nccl.Destroy(comm);
            cuda.SetCurrent(device.Context);
            cuda.DestroyEvent(done);
            cuda.DestroyStream(stream);
        }

        var runs = Enumerable.Range(0, 32).Select(r => new CheckpointEngine.Memory.ByteRun(4096 + r * 512 + 128, r * 128, 128)) // Columns of a 32 × 512-byte matrix.
            .Append(new CheckpointEngine.Memory.ByteRun(100_000, 4096, 30_000)) // A whole tensor.
            .ToList();
        Upload(device, new byte[size], into.Address);
        await backend.Group.ScatterPartsAsync(from.Address, size, 0, runs, [null], into.Address, TimeSpan.FromSeconds(30), ct);
        Assert.Equal(Packed(original, runs, size), Download(device, into.Address, size));

        static async Task Until(Func<bool> done, string what)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (!done())
            {
                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException($"NCCL: {what} did not finish within 30 s");
                }
                await Task.Delay(1);
            }
        }
    }

    /// <summary>The runs of <paramref name="bytes"/> copied into <paramref name="size"/> zero bytes on the host.</summary>
    private static unsafe byte[] Packed(byte[] bytes, List<CheckpointEngine.Memory.ByteRun> runs, int size)
    {
        var result = new byte[size];
        fixed (byte* from = bytes, to = result)
        {
            CheckpointEngine.Memory.ByteRun.CopyAll(runs, (nint)from, (nint)to);
        }
        return result;
    }

    private static unsafe void Upload(CudaDevice device, byte[] bytes, nint address)
    {
        fixed (byte* p = bytes)
        {
            device.CopyHostToDevice([new HostCopy((nint)p, address, bytes.Length)]);
        }
    }

    private static unsafe byte[] Download(CudaDevice device, nint address, int size)
    {
        var back = new byte[size];
        fixed (byte* p = back)
        {
            CudaDriver.Instance.SetCurrent(device.Context);
            CudaDriver.Instance.CopyDeviceToHost((nint)p, (ulong)address, size);
        }
        return back;
    }

    /// <summary>The runs applied to a copy of <paramref name="bytes"/> on the host, landing <paramref name="offset"/> bytes further on.</summary>
    private static unsafe byte[] OnHost(byte[] bytes, List<CheckpointEngine.Memory.ByteRun> runs, int offset)
    {
        var result = (byte[])bytes.Clone();
        fixed (byte* p = result)
        {
            CheckpointEngine.Memory.ByteRun.CopyAll(runs, (nint)p, (nint)p + offset);
        }
        return result;
    }
}
