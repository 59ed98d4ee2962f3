using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Benchmarks;

/// <summary>
/// The machine's limits, measured in the same run as what is compared to them (the measurements live
/// in the library, <see cref="Cli.Bench.Baselines"/>, shared with <c>ckpt-engine bench</c>), and process helpers.
/// </summary>
public static unsafe class Baselines
{
    /// <summary>Seconds for one thread to copy <paramref name="bytes"/> between two already-touched buffers (best of three).</summary>
    public static double Memcpy(long bytes) => Cli.Bench.Baselines.Memcpy(bytes);

    /// <summary>Seconds to push <paramref name="bytes"/> through one loopback TCP connection between two threads, in 4 MiB writes (best of three).</summary>
    public static double RawSocket(long bytes) => Cli.Bench.Baselines.RawTcp(bytes);

    /// <summary>The value after <paramref name="name"/> on the command line, or null.</summary>
    public static string? Option(string[] args, string name)
    {
        var i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
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
    public static void Touch(nint address, long length) => Cli.Bench.Baselines.Touch(address, length);
}
