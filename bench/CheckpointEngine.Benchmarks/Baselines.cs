using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Benchmarks;

/// <summary>The machine's limits, measured in the same run as what is compared to them.</summary>
public static unsafe class Baselines
{
    /// <summary>Seconds for one thread to copy <paramref name="bytes"/> between two already-touched buffers (best of three).</summary>
    public static double Memcpy(long bytes)
    {
        using var src = NativeBuffer.Allocate(bytes);
        using var dst = NativeBuffer.Allocate(bytes);
        Touch(src);
        Touch(dst);
        return Enumerable.Range(0, 3).Min(_ =>
        {
            var sw = Stopwatch.StartNew();
            Buffer.MemoryCopy(src.Pointer, dst.Pointer, bytes, bytes);
            return sw.Elapsed.TotalSeconds;
        });
    }

    /// <summary>Seconds to push <paramref name="bytes"/> through one loopback TCP connection between two threads, in 4 MiB writes (best of three).</summary>
    public static double RawSocket(long bytes)
    {
        using var src = NativeBuffer.Allocate(bytes);
        using var dst = NativeBuffer.Allocate(bytes);
        Touch(src);
        Touch(dst);
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var sender = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { SendBufferSize = 4 << 20 };
        sender.Connect(listener.LocalEndPoint!);
        using var receiver = listener.Accept();
        receiver.ReceiveBufferSize = 4 << 20;
        return Enumerable.Range(0, 3).Min(_ =>
        {
            var sw = Stopwatch.StartNew();
            var receive = Task.Factory.StartNew(() =>
            {
                for (long got = 0; got < bytes;)
                {
                    got += receiver.Receive(new Span<byte>(dst.Pointer + got, (int)Math.Min(4 << 20, bytes - got)));
                }
            }, TaskCreationOptions.LongRunning);
            for (long sent = 0; sent < bytes;)
            {
                sent += sender.Send(new ReadOnlySpan<byte>(src.Pointer + sent, (int)Math.Min(4 << 20, bytes - sent)));
            }
            receive.Wait();
            return sw.Elapsed.TotalSeconds;
        });
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>This benchmark program started again with other arguments (a rank), output redirected.</summary>
    public static ProcessStartInfo Self(params string[] args)
    {
        var self = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
        {
            psi.ArgumentList.Add(typeof(Baselines).Assembly.Location);
        }
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        return psi;
    }

    public static void Touch(NativeBuffer b) => Touch(b.Address, b.Capacity);

    /// <summary>Faults every page in, so what is measured next is copying, not first-touch faults.</summary>
    public static void Touch(nint address, long length)
    {
        for (long i = 0; i < length; i += 4096)
        {
            ((byte*)address)[i] = 1;
        }
    }
}
