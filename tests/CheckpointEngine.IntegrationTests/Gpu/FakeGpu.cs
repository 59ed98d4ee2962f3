using System.Diagnostics;
using CheckpointEngine.IntegrationTests.Runtime;

namespace CheckpointEngine.IntegrationTests.Gpu;

/// <summary>
/// The stand-ins for the CUDA driver and NCCL (Fake/*.c), built once per test run with gcc, and the
/// environment that points a process at them (<c>CKPT_ENGINE_CUDA_LIBRARY</c>, <c>CKPT_ENGINE_NCCL_LIBRARY</c>;
/// the Python worker reads the first too).
/// </summary>
internal static class FakeGpu
{
    private static readonly Lazy<(string Cuda, string Nccl)> Libraries = new(Build);

    private static async Task<(bool, string)> CompilerWorks()
    {
        var probe = Path.Combine(Path.GetTempPath(), $"ckpt-cc-probe-{System.Environment.ProcessId}.c");
        await File.WriteAllTextAsync(probe, "#include <pthread.h>\n#include <stdio.h>\nint main(void) { return 0; }\n");
        try
        {
            return File.Exists("/usr/bin/gcc")
                ? await TestProcess.RunAsync("gcc", ["-fsyntax-only", probe], TimeSpan.FromMinutes(1)) is var (code, output) && code == 0 ? (true, "gcc") : (false, output.Trim())
                : (false, "no /usr/bin/gcc");
        }
        finally
        {
            File.Delete(probe);
        }
    }

    private static (string Cuda, string Nccl) Build()
    {
        DebianPackages.EnsureAsync(CompilerWorks, "the CUDA backend's CPU tests build stand-ins for the driver and NCCL with gcc", "gcc", "libc6-dev")
            .GetAwaiter().GetResult();
        var source = Path.Combine(CkptEngineScript.RepoRoot(), "tests", "CheckpointEngine.IntegrationTests", "Gpu", "Fake");
        var output = Directory.CreateTempSubdirectory("ckpt-fake-gpu-").FullName;
        string Compile(string name)
        {
            var library = Path.Combine(output, $"lib{name}.so");
            var psi = new ProcessStartInfo("gcc") { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in new[] { "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", library, Path.Combine(source, name + ".c") })
            {
                psi.ArgumentList.Add(a);
            }
            Process? started;
            try
            {
                started = Process.Start(psi);
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                throw new InvalidOperationException("the CUDA backend's CPU tests build stand-ins for the driver and NCCL with gcc, which is not installed (apt-get install gcc libc6-dev; .ci/run does it)", e);
            }
            using var gcc = started ?? throw new InvalidOperationException("gcc did not start");
            var errors = gcc.StandardError.ReadToEnd();
            if (!gcc.WaitForExit(60_000) || gcc.ExitCode != 0)
            {
                throw new InvalidOperationException($"gcc could not build {name}.c: {errors}");
            }
            return library;
        }
        return (Compile("fake_cuda"), Compile("fake_nccl"));
    }

    /// <summary>The variables that point a process at the stand-ins, with <paramref name="devices"/> GPUs.</summary>
    public static Dictionary<string, string> Environment(int devices) => new()
    {
        ["CKPT_ENGINE_CUDA_LIBRARY"] = Libraries.Value.Cuda,
        ["CKPT_ENGINE_NCCL_LIBRARY"] = Libraries.Value.Nccl,
        ["FAKE_CUDA_DEVICES"] = devices.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["FAKE_NCCL_TIMEOUT_S"] = "60",
        // Device ids name the workers' sockets: each test gets devices of its own, whatever else runs on this machine.
        ["FAKE_CUDA_UUID_SALT"] = ((uint)Random.Shared.Next()).ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    /// <summary>The UUID the stand-in driver started with <paramref name="environment"/> gives device <paramref name="device"/> (as fake_cuda.c makes it): what a worker's shard names.</summary>
    public static string DeviceUuid(int device, IReadOnlyDictionary<string, string> environment)
    {
        var salt = uint.Parse(environment["FAKE_CUDA_UUID_SALT"], System.Globalization.CultureInfo.InvariantCulture);
        var raw = Enumerable.Range(0, 16).Select(i => (byte)(i < 12 ? 0x10 * device + i : (int)(salt >> (8 * (i - 12))))).ToArray();
        return CheckpointEngine.Interop.Cuda.CudaDriver.FormatUuid(raw);
    }

    /// <summary>
    /// Whether one order of NCCL operations fits what every process submitted, as the stand-in logged it under <c>FAKE_NCCL_ORDER_DIR</c>
    /// (one line per operation: its communicator and its number there, in the process's submission order). NCCL asks that operations on
    /// several communicators be submitted in the same order on every rank; where no single order fits, some ranks wait on each other in a
    /// cycle on a GPU. Returns such a cycle (each operation submitted before the next by some process), or null.
    /// </summary>
    public static string? SubmissionCycle(string dir)
    {
        var after = new Dictionary<string, HashSet<string>>();
        foreach (var file in Directory.EnumerateFiles(dir, "*.log"))
        {
            string? previous = null;
            foreach (var op in File.ReadLines(file))
            {
                after.TryAdd(op, []);
                if (previous is not null)
                {
                    after[previous].Add(op);
                }
                previous = op;
            }
        }
        // Depth-first, without recursion: an edge back to an operation on the current path closes a cycle.
        var state = after.Keys.ToDictionary(k => k, _ => 0); // 0 unseen, 1 on the path, 2 done.
        foreach (var start in after.Keys.Where(k => state[k] == 0).ToList())
        {
            var path = new List<string> { start };
            var next = new Stack<IEnumerator<string>>([after[start].GetEnumerator()]);
            state[start] = 1;
            while (next.Count > 0)
            {
                if (!next.Peek().MoveNext())
                {
                    next.Pop();
                    state[path[^1]] = 2;
                    path.RemoveAt(path.Count - 1);
                    continue;
                }
                var op = next.Peek().Current;
                if (state[op] == 1)
                {
                    return string.Join(" -> ", path.Skip(path.IndexOf(op)).Append(op));
                }
                if (state[op] == 0)
                {
                    state[op] = 1;
                    path.Add(op);
                    next.Push(after[op].GetEnumerator());
                }
            }
        }
        return null;
    }

    /// <summary>
    /// The stand-ins' shared memory in /dev/shm (device allocations, NCCL's rendezvous) whose creating process has exited: names carry
    /// the creator's pid (fakecuda-PID-N, fakenccl-PID-...), and what live processes hold (another test run's) is none of this run's business.
    /// </summary>
    public static string[] Leftovers() =>
        [.. Directory.EnumerateFiles("/dev/shm", "fake*").Select(f => Path.GetFileName(f)).Where(n =>
            System.Text.RegularExpressions.Regex.Match(n, @"^fake(?:cuda|nccl)-(\d+)-") is not { Success: true } m || !Directory.Exists($"/proc/{m.Groups[1].Value}"))];

    /// <summary>A real driver frees a killed process's memory; the stand-ins' is removed here (all but <paramref name="before"/>).</summary>
    public static void RemoveLeftovers(IReadOnlySet<string> before)
    {
        foreach (var name in Leftovers().Where(n => !before.Contains(n)))
        {
            File.Delete(Path.Combine("/dev/shm", name));
        }
    }
}
