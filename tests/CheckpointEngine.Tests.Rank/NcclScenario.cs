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
