using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CheckpointEngine.IntegrationTests.Hosts;

/// <summary>
/// Several real hosts on this machine (through <c>scripts/hosts.sh</c>): each a network namespace with its own
/// veth link and private address on a bridge in a namespace of its own, a private <c>/dev/shm</c> and its own
/// hostname. Processes run inside a host; the test reaches a host's loopback services through sockets made
/// inside its namespace. Dispose removes namespaces, links and every process inside, also after a failure;
/// each start first sweeps worlds left over for an hour by runs that died.
/// </summary>
internal sealed partial class NetnsHosts : IDisposable
{
    private readonly string[] _namespaces;
    private int _disposed;

    private NetnsHosts(string world, string[] namespaces, IPAddress[] addresses)
    {
        World = world;
        _namespaces = namespaces;
        Addresses = addresses;
    }

    /// <summary>This world's name (every namespace's prefix).</summary>
    public string World { get; }

    /// <summary>Host i's address on the link between the hosts.</summary>
    public IReadOnlyList<IPAddress> Addresses { get; }

    public int Count => Addresses.Count;

    /// <summary>Why hosts cannot be made here (not root, a kernel feature missing), or null.</summary>
    public static string? Unavailable => LazyUnavailable.Value;

    private static readonly Lazy<string?> LazyUnavailable = new(() =>
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
        {
            return "several hosts on one machine need root on Linux (network namespaces); CI runs as root";
        }
        var (code, output) = Script(["check"], check: false);
        return code == 0 ? null : "this machine cannot build hosts: " + string.Join("; ", output.Split('\n').Where(l => l.Contains(": no", StringComparison.Ordinal)));
    });

    /// <summary>Skips the calling test, saying why, where hosts cannot be made.</summary>
    public static void SkipUnlessAvailable() => Assert.SkipWhen(Unavailable is not null, Unavailable ?? "");

    /// <summary>Makes <paramref name="hosts"/> hosts under a name of their own (other runs may make theirs at the same time).</summary>
    public static NetnsHosts Create(int hosts)
    {
        Script(["sweep", "60"]);
        var world = $"ckpt-t{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}";
        try
        {
            var (_, output) = Script(["up", world, hosts.ToString(CultureInfo.InvariantCulture)]);
            var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("host ", StringComparison.Ordinal)).Select(l => l.Split(' ')).ToArray();
            return new NetnsHosts(world, [.. lines.Select(f => f[2])], [.. lines.Select(f => IPAddress.Parse(f[3]))]);
        }
        catch
        {
            Script(["down", world], check: false);
            throw;
        }
    }

    /// <summary>Makes <paramref name="psi"/> start its program inside host <paramref name="host"/> (the process keeps its id: the script execs into it).</summary>
    public void Place(int host, ProcessStartInfo psi)
    {
        var (program, args) = (psi.FileName, psi.ArgumentList.ToArray());
        psi.FileName = ScriptPath;
        psi.ArgumentList.Clear();
        foreach (var a in (string[])["run", World, host.ToString(CultureInfo.InvariantCulture), program, .. args])
        {
            psi.ArgumentList.Add(a);
        }
    }

    /// <summary>Pulls (or plugs back) host <paramref name="host"/>'s cable at the switch: its packets vanish, nobody is told.</summary>
    public void SetLink(int host, bool up) => Script(["link", World, host.ToString(CultureInfo.InvariantCulture), up ? "up" : "down"]);

    /// <summary>Limits host <paramref name="host"/>'s link both ways to <paramref name="rate"/> (tc's form, e.g. 400mbit; "off" lifts it) with tc tbf.</summary>
    public void Shape(int host, string rate) => Script(["shape", World, host.ToString(CultureInfo.InvariantCulture), rate]);

    /// <summary>Bytes the switch has sent down host <paramref name="host"/>'s link so far (the kernel's counter).</summary>
    public long BytesTo(int host)
    {
        var psi = new ProcessStartInfo("ip", ["-n", $"{World}-sw", "-s", "-j", "link", "show", $"h{host}"]) { RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        var json = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        return doc.RootElement[0].GetProperty("stats64").GetProperty("tx").GetProperty("bytes").GetInt64();
    }

    /// <summary>SIGKILLs every process of host <paramref name="host"/> at once, as a machine failure would.</summary>
    public void KillHost(int host) => Script(["kill", World, host.ToString(CultureInfo.InvariantCulture)]);

    /// <summary>The command lines of the processes in host <paramref name="host"/>'s network.</summary>
    public IReadOnlyList<string> Processes(int host)
    {
        var psi = new ProcessStartInfo("ip", ["netns", "pids", _namespaces[host]]) { RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        var pids = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return [.. pids.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(pid =>
        {
            try
            {
                return File.ReadAllText($"/proc/{pid.Trim()}/cmdline").Replace('\0', ' ');
            }
            catch (IOException)
            {
                return ""; // Gone meanwhile.
            }
        }).Where(c => c.Length > 0)];
    }

    /// <summary>A TCP socket that lives in host <paramref name="host"/>'s network (made there; usable from any thread).</summary>
    public Socket Socket(int host)
    {
        Socket? socket = null;
        Exception? error = null;
        // setns changes only the calling thread's namespace: a thread of our own enters it, makes the socket and ends.
        var thread = new Thread(() =>
        {
            try
            {
                using var ns = File.OpenHandle($"/run/netns/{_namespaces[host]}");
                if (SetNs(ns, CloneNewNet) != 0)
                {
                    throw new IOException($"setns into {_namespaces[host]} failed: errno {Marshal.GetLastPInvokeError()}");
                }
                socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            }
            catch (Exception e)
            {
                error = e;
            }
        });
        thread.Start();
        thread.Join();
        return socket ?? throw new IOException($"no socket in host {host}", error);
    }

    /// <summary>An HTTP client whose connections start inside host <paramref name="host"/> (for its loopback services).</summary>
    public HttpClient Http(int host) => new(new SocketsHttpHandler
    {
        ConnectCallback = async (context, ct) =>
        {
            var s = Socket(host);
            try
            {
                await s.ConnectAsync(context.DnsEndPoint, ct);
                return new NetworkStream(s, ownsSocket: true);
            }
            catch
            {
                s.Dispose();
                throw;
            }
        },
    }) { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            Script(["down", World], check: false);
        }
    }

    private const int CloneNewNet = 0x40000000;

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    private static partial int SetNs(SafeFileHandle fd, int nstype);

    private static string ScriptPath => Path.Combine(CheckpointEngine.Tests.Support.CkptEngineScript.RepoRoot(), "scripts", "hosts.sh");

    private static (int Code, string Output) Script(string[] args, bool check = true)
    {
        var psi = new ProcessStartInfo(ScriptPath) { RedirectStandardOutput = true, RedirectStandardError = true };
        args.ToList().ForEach(psi.ArgumentList.Add);
        using var p = Process.Start(psi)!;
        var (stdout, stderr) = (p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
        if (!p.WaitForExit(TimeSpan.FromSeconds(60)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"scripts/hosts.sh {string.Join(' ', args)} did not finish in 60 s");
        }
        var output = stdout.Result + stderr.Result;
        return !check || p.ExitCode == 0 ? (p.ExitCode, output) : throw new InvalidOperationException($"scripts/hosts.sh {string.Join(' ', args)} exited {p.ExitCode}: {output}");
    }
}
