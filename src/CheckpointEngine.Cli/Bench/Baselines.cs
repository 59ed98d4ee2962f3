using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Hosting.Launch;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// The machine's limits, measured in the same run as what is compared to them: one thread's memcpy,
/// every thread's memcpy, a copy out of shared memory written by another process, and one loopback
/// TCP connection. Each figure is the best of three over buffers whose pages are already touched.
/// </summary>
public static unsafe class Baselines
{
    private const int Rounds = 3;
    private const int TcpChunk = 4 << 20;

    /// <summary>Seconds for one thread to copy <paramref name="bytes"/> between two already-touched buffers.</summary>
    public static double Memcpy(long bytes)
    {
        using var src = Touched(bytes);
        using var dst = Touched(bytes);
        return Best(() => Buffer.MemoryCopy(src.Pointer, dst.Pointer, bytes, bytes));
    }

    /// <summary>Seconds for one <c>cuMemcpyHtoD</c> of <paramref name="bytes"/> from page-locked host memory to CUDA device 0 (best of three).</summary>
    public static double PinnedHostToDevice(long bytes)
    {
        using var device = new Runtime.Devices.CudaDevice(0);
        var cuda = Interop.Cuda.CudaDriver.Instance;
        using var src = Touched(bytes);
        device.RegisterHostMemory(src.Address, src.Capacity);
        using var dst = device.AllocateShared(bytes);
        try
        {
            return Best(() =>
            {
                cuda.SetCurrent(device.Context);
                cuda.CopyHostToDevice((ulong)dst.Address, src.Address, bytes);
            });
        }
        finally
        {
            device.UnregisterHostMemory(src.Address);
        }
    }

    /// <summary>Seconds for <paramref name="threads"/> threads (default: one per processor) to copy <paramref name="bytes"/>, each its own slice.</summary>
    public static double MemcpyParallel(long bytes, int threads = 0)
    {
        threads = threads > 0 ? threads : Environment.ProcessorCount;
        using var src = Touched(bytes);
        using var dst = Touched(bytes);
        var slice = (bytes / threads + 4095) / 4096 * 4096;
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads };
        var (s, d) = (src.Address, dst.Address);
        return Best(() => Parallel.For(0, threads, options, i =>
        {
            var start = Math.Min(bytes, i * slice);
            var length = Math.Min(bytes - start, slice);
            Buffer.MemoryCopy((byte*)(s + (nint)start), (byte*)(d + (nint)start), length, length);
        }));
    }

    /// <summary>
    /// Copies <paramref name="bytes"/> through shared memory between two processes: this one writes a
    /// /dev/shm segment, a child ckpt-engine (<paramref name="reader"/>, given the segment name and the
    /// size) maps it and copies it out, printing <c>seconds=S</c>. Returns (the write's seconds, the copy-out's seconds).
    /// </summary>
    public static (double Write, double CopyOut) SharedMemory(long bytes, IReadOnlyList<string> reader, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(reader);
        using var src = Touched(bytes);
        using var segment = SharedMemorySegment.Create(SharedMemorySegment.NewName("bench"), bytes);
        var write = Best(() => Buffer.MemoryCopy(src.Pointer, segment.Pointer, bytes, bytes));
        var psi = new ProcessStartInfo(reader[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in reader.Skip(1).Concat([segment.Name, bytes.ToString(CultureInfo.InvariantCulture)]))
        {
            psi.ArgumentList.Add(arg);
        }
        using var child = Process.Start(psi) ?? throw new IOException($"cannot start the shared-memory reader '{reader[0]}'");
        var stdout = child.StandardOutput.ReadToEndAsync();
        var stderr = child.StandardError.ReadToEndAsync();
        if (!child.WaitForExit(timeout))
        {
            child.Kill(entireProcessTree: true);
            throw new IOException($"the shared-memory reader (pid {child.Id}) did not finish within {timeout.TotalSeconds:F0} s");
        }
        var line = stdout.Result.Split('\n').FirstOrDefault(l => l.StartsWith("seconds=", StringComparison.Ordinal));
        if (child.ExitCode != 0 || line is null || !double.TryParse(line["seconds=".Length..], NumberStyles.Float, CultureInfo.InvariantCulture, out var copyOut))
        {
            throw new IOException($"the shared-memory reader failed (exit {child.ExitCode}): {stderr.Result.Trim()}{stdout.Result.Trim()}");
        }
        return (write, copyOut);
    }

    /// <summary>The reader's side of <see cref="SharedMemory"/>: seconds to copy the segment into this process's memory.</summary>
    public static double CopyOutOfSharedMemory(string segmentName, long bytes)
    {
        using var segment = SharedMemorySegment.Open(segmentName, bytes);
        using var dst = Touched(bytes);
        return Best(() => Buffer.MemoryCopy(segment.Pointer, dst.Pointer, bytes, bytes));
    }

    /// <summary>The command that runs this ckpt-engine as the reader of <see cref="SharedMemory"/>.</summary>
    public static IReadOnlyList<string> SelfReader() => Launcher.SelfCommand("bench", BenchShmReader);

    internal const string BenchShmReader = "shm-read";

    /// <summary>
    /// Seconds to push <paramref name="bytes"/> through each of <paramref name="connections"/> loopback TCP connections at once
    /// (a sending and a receiving thread each, 4 MiB writes): with one, the link's speed; with N, what bounds each of N receivers.
    /// </summary>
    public static double RawTcp(long bytes, int connections = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(connections);
        using var src = Touched(bytes);
        var targets = Enumerable.Range(0, connections).Select(_ => Touched(bytes)).ToList();
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var pairs = new List<(Socket Sender, Socket Receiver)>();
        try
        {
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(connections);
            for (var i = 0; i < connections; i++)
            {
                var sender = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { SendBufferSize = TcpChunk };
                sender.Connect(listener.LocalEndPoint!);
                var receiver = listener.Accept();
                receiver.ReceiveBufferSize = TcpChunk;
                receiver.ReceiveTimeout = sender.SendTimeout = 60_000; // Deadline: a stuck loopback must not hang the benchmark.
                pairs.Add((sender, receiver));
            }
            var s = src.Address;
            return Best(() => Task.WaitAll([.. pairs.SelectMany((p, i) => new[]
            {
                Dedicated(() =>
                {
                    for (long got = 0, d = targets[i].Address; got < bytes;)
                    {
                        var n = p.Receiver.Receive(new Span<byte>((byte*)(d + (nint)got), (int)Math.Min(TcpChunk, bytes - got)));
                        got += n > 0 ? n : throw new IOException("loopback connection closed early");
                    }
                }),
                Dedicated(() =>
                {
                    for (long sent = 0; sent < bytes;)
                    {
                        sent += p.Sender.Send(new ReadOnlySpan<byte>((byte*)(s + (nint)sent), (int)Math.Min(TcpChunk, bytes - sent)));
                    }
                }),
            })]));
        }
        finally
        {
            foreach (var (sender, receiver) in pairs)
            {
                sender.Dispose();
                receiver.Dispose();
            }
            targets.ForEach(t => t.Dispose());
        }
    }

    private static Task Dedicated(Action work) => Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>Faults every page in, so what is measured next is copying, not first-touch faults.</summary>
    public static void Touch(nint address, long length)
    {
        for (long i = 0; i < length; i += 4096)
        {
            ((byte*)address)[i] = 1;
        }
    }

    private static NativeBuffer Touched(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        var buffer = NativeBuffer.Allocate(bytes);
        Touch(buffer.Address, buffer.Capacity);
        return buffer;
    }

    private static double Best(Action copy)
    {
        var best = double.MaxValue;
        for (var i = 0; i < Rounds; i++)
        {
            var clock = Stopwatch.StartNew();
            copy();
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }
        return best;
    }
}
