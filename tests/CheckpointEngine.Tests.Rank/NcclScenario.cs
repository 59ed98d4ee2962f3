using System.Diagnostics;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Runtime;
using CheckpointEngine.Runtime.Devices;

/// <summary>
/// The NCCL communicator's failure paths, on the CUDA backend (in tests: the stand-in driver and NCCL). Rank 1
/// broadcasts a pattern that rank 0 checks, then stops taking part ("hang": it sleeps; "die": it exits without a
/// goodbye); rank 0 waits for its next broadcast, which never comes, and must fail instead of hanging.
/// </summary>
internal static class NcclScenario
{
    private const int Size = 1 << 20;

    public static async Task Run(World world, TimeSpan timeout, string mode)
    {
        using var backend = await Backend.CreateAsync(world, DeviceKind.Cuda, timeout);
        using var buffer = backend.Device.AllocateShared(Size);
        var pattern = Enumerable.Range(0, Size).Select(i => (byte)(i * 7 + 3)).ToArray();
        if (world.Rank == 1)
        {
            Copy(backend.Device, pattern, buffer.Address, toDevice: true);
        }
        await backend.Group.BroadcastAsync(buffer.Address, Size, root: 1, timeout);
        var received = new byte[Size];
        Copy(backend.Device, received, buffer.Address, toDevice: false);
        Console.WriteLine($"broadcast {(received.AsSpan().SequenceEqual(pattern) ? "equal" : "differs")}");
        Console.Out.Flush();
        if (world.Rank == 1)
        {
            if (mode == "die")
            {
                Environment.Exit(137); // No goodbye to the store: like a crash.
            }
            await Task.Delay(timeout * 4);
            return;
        }
        var clock = Stopwatch.StartNew();
        try
        {
            await backend.Group.BroadcastAsync(buffer.Address, Size, root: 1, timeout);
        }
        finally
        {
            Console.WriteLine($"failed-after {clock.Elapsed.TotalSeconds:F2}");
        }
    }

    /// <summary>
    /// The order NCCL operations are submitted in across a device's communicators: both ranks call broadcasts a1 and a2 on group a, then b1 on
    /// group b. Rank 0 calls all three at once, while a1 waits for rank 1 (so a2 waits for a1: one collective at a time per group); rank 1
    /// starts only once rank 0 has made its calls (a barrier of the store), and calls a2 and b1 once a1 has run. Both must submit a1, a2, b1
    /// (the stand-in logs it): had rank 0 submitted b1 while a2 waited, the two ranks' orders would disagree.
    /// </summary>
    public static async Task Order(World world, TimeSpan timeout)
    {
        using var backend = await Backend.CreateAsync(world, DeviceKind.Cuda, timeout);
        using var buffer = backend.Device.AllocateShared(Size);
        using var a = await backend.Group.CreateSubGroupAsync("a", [0, 1], timeout);
        using var b = await backend.Group.CreateSubGroupAsync("b", [0, 1], timeout);
        if (world.Rank == 1)
        {
            await world.Group.BarrierAsync(timeout);
            await a.BroadcastAsync(buffer.Address, Size, root: 1, timeout);
            await Task.WhenAll(a.BroadcastAsync(buffer.Address, Size, root: 1, timeout), b.BroadcastAsync(buffer.Address, Size, root: 1, timeout));
        }
        else
        {
            Task[] calls = [a.BroadcastAsync(buffer.Address, Size, root: 1, timeout), a.BroadcastAsync(buffer.Address, Size, root: 1, timeout),
                b.BroadcastAsync(buffer.Address, Size, root: 1, timeout)];
            await world.Group.BarrierAsync(timeout);
            await Task.WhenAll(calls);
        }
        Console.WriteLine("order done");
    }

    private static unsafe void Copy(IDevice device, byte[] host, nint deviceAddress, bool toDevice)
    {
        fixed (byte* p = host)
        {
            if (toDevice)
            {
                device.CopyHostToDevice([new HostCopy((nint)p, deviceAddress, host.Length)]);
            }
            else
            {
                CudaDriver.Instance.SetCurrent(((CudaDevice)device).Context);
                CudaDriver.Instance.CopyDeviceToHost((nint)p, (ulong)deviceAddress, host.Length);
            }
        }
    }
}
