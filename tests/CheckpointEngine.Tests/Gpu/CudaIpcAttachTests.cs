using System.Diagnostics;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Tests.Worker;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Gpu;

/// <summary>
/// A <c>cuda-ipc</c> attach whose size claims more than the allocation behind the handle is refused by
/// the .NET and the Python receivers (they ask the driver, <c>cuMemGetAddressRange</c>), before any
/// byte is read past its end. Another process exports the allocation: a process cannot open its own.
/// </summary>
[Trait("Category", "GPU")]
public sealed class CudaIpcAttachTests
{
    private const int Allocated = 1 << 20;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    /// <summary>Allocates <see cref="Allocated"/> bytes on device 0, prints the IPC handle (base64), waits for stdin to close.</summary>
    private const string Exporter = """
        import base64, ctypes, os, sys
        cu = ctypes.CDLL(os.environ.get("CKPT_ENGINE_CUDA_LIBRARY") or "libcuda.so.1")
        def call(name, *args):
            status = getattr(cu, name)(*args)
            if status: raise SystemExit("%s failed: %d" % (name, status))
        call("cuInit", 0)
        dev, ctx, ptr, handle = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64(), (ctypes.c_char * 64)()
        call("cuDeviceGet", ctypes.byref(dev), 0)
        call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
        call("cuCtxSetCurrent", ctx)
        call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(int(sys.argv[1])))
        call("cuIpcGetMemHandle", handle, ptr)
        print(base64.b64encode(bytes(handle)).decode(), flush=True)
        sys.stdin.read()
        """;

    /// <summary>Opens the handle in argv[1] with the Python receiver's IpcMapping, claiming argv[2] bytes; prints the outcome.</summary>
    private const string PythonOpener = """
        import base64, importlib.util, sys
        spec = importlib.util.spec_from_file_location("ckpt_cuda", sys.argv[3])
        cuda = importlib.util.module_from_spec(spec); spec.loader.exec_module(cuda)
        try:
            cuda.IpcMapping(base64.b64decode(sys.argv[1]), int(sys.argv[2]), 0).close()
            print("opened")
        except ValueError as e:
            print("refused: %s" % e)
        """;

    [Fact]
    public async Task Attach_ClaimingMoreThanTheAllocation_IsRefusedByBothReceivers_NamingBothSizes()
    {
        Assert.SkipUnless(CudaDriver.HasDevice(), "no CUDA device on this machine");
        using var exporter = Start(Exporter, Allocated.ToString(System.Globalization.CultureInfo.InvariantCulture));
        try
        {
            var handle = await exporter.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(Deadline, TestContext.Current.CancellationToken)
                ?? throw new InvalidOperationException("the exporter failed: " + await exporter.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken));
            var device = CudaDriver.Instance.DeviceUuid(CudaDriver.Instance.Device(0));

            Assert.Equal($"the attach claims {2 * Allocated} bytes, but the CUDA IPC allocation holds {Allocated}", await DotNetAttachAsync(handle, device, 2 * Allocated));
            Assert.Null(await DotNetAttachAsync(handle, device, Allocated));

            var cudaPy = CudaPy();
            Assert.Equal($"refused: the attach claims {2 * Allocated} bytes, but the CUDA IPC allocation holds {Allocated}", await PythonAttachAsync(handle, 2 * Allocated, cudaPy));
            Assert.Equal("opened", await PythonAttachAsync(handle, Allocated, cudaPy));
        }
        finally
        {
            exporter.StandardInput.Close();
            await exporter.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(Deadline, TestContext.Current.CancellationToken);
        }
    }

    /// <summary>The .NET receiver's answer to the attach: null when ok, else the error's reason.</summary>
    private static async Task<string?> DotNetAttachAsync(string handle, string device, long size)
    {
        using var ps = FakeParameterServer.Start();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var receiver = WeightReceiver.ReceiveAsync(ps.Ticket.ToString(), (_, _) => { }, null, Deadline, cts.Token);
        await ps.AcceptAsync();
        var reply = await ps.SendAsync(new AttachMessage("cuda-ipc", handle, size, device));
        await cts.CancelAsync();
        await receiver.ContinueWith(static _ => { }, TaskScheduler.Default);
        if (reply.Ok)
        {
            return null;
        }
        const string prefix = "attach: cannot map the CUDA IPC buffer of device ";
        Assert.StartsWith(prefix, reply.Error, StringComparison.Ordinal);
        var error = reply.Error!;
        return error[(error.IndexOf(": ", prefix.Length, StringComparison.Ordinal) + 2)..].Split(" (Parameter", 2)[0];
    }

    private static async Task<string> PythonAttachAsync(string handle, long size, string cudaPy)
    {
        using var opener = Start(PythonOpener, handle, size.ToString(System.Globalization.CultureInfo.InvariantCulture), cudaPy);
        opener.StandardInput.Close();
        var output = await opener.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken).WaitAsync(Deadline, TestContext.Current.CancellationToken);
        await opener.WaitForExitAsync(TestContext.Current.CancellationToken);
        return output.Trim() is { Length: > 0 } line ? line : "failed: " + await opener.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
    }

    /// <summary>The Python package's cuda.py: in the repository, or beside the GPU check's payload (app/ and python/ side by side).</summary>
    private static string CudaPy()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var path = Path.Combine(d.FullName, "python", "ckpt_engine_worker", "cuda.py");
            if (File.Exists(path))
            {
                return path;
            }
        }
        throw new InvalidOperationException("python/ckpt_engine_worker/cuda.py not found above " + AppContext.BaseDirectory);
    }

    private static Process Start(string code, params string[] args)
    {
        var psi = new ProcessStartInfo("python3") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in (string[])["-c", code, .. args])
        {
            psi.ArgumentList.Add(a);
        }
        return Process.Start(psi)!;
    }
}
