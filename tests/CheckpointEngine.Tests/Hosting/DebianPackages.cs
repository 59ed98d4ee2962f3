using System.Diagnostics;
using CheckpointEngine.Tests.Python;

namespace CheckpointEngine.Tests.Hosting;

/// <summary>
/// What some tests need from the machine (torch for /usr/bin/python3, a C compiler), installed on a fresh
/// machine when the tests run as root with apt-get: once, serialised by a lock file across test classes and
/// processes, bounded by a deadline. Anywhere else a missing package fails with what to install.
/// </summary>
internal static class DebianPackages
{
    private const string LockFile = "/tmp/ckpt-engine-apt.lock";
    private static readonly TimeSpan InstallDeadline = TimeSpan.FromMinutes(20);

    /// <param name="present">Whether what is needed works now, and what it says (a version, or why not).</param>
    /// <returns>What <paramref name="present"/> says once it works.</returns>
    public static async Task<string> EnsureAsync(Func<Task<(bool Ok, string Output)>> present, string purpose, params string[] packages)
    {
        var (ok, output) = await present();
        if (ok)
        {
            return output;
        }
        var names = string.Join(' ', packages);
        if (!Environment.IsPrivilegedProcess || !File.Exists("/usr/bin/apt-get"))
        {
            throw new InvalidOperationException(
                $"{purpose} ({output}); install {names} (apt-get install -y --no-install-recommends {names}) or run the tests as root to have them install it");
        }
        using var held = await LockAsync();
        (ok, output) = await present(); // Another process may have installed it meanwhile.
        if (ok)
        {
            return output;
        }
        var env = new Dictionary<string, string> { ["DEBIAN_FRONTEND"] = "noninteractive" };
        string[] install = ["-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", .. packages];
        var (code, log) = await PythonTorch.RunAsync("apt-get", install, InstallDeadline, environment: env);
        if (code != 0)
        {
            // A fresh machine may have no package lists yet.
            var (updated, updateLog) = await PythonTorch.RunAsync("apt-get", ["-o", "DPkg::Lock::Timeout=600", "update"], TimeSpan.FromMinutes(10), environment: env);
            (code, log) = updated == 0 ? await PythonTorch.RunAsync("apt-get", install, InstallDeadline, environment: env) : (updated, updateLog);
        }
        (ok, output) = await present();
        return ok ? output : throw new InvalidOperationException(
            $"installing {names} failed (apt-get exited {code}; the check says: {output}):\n{(log.Length <= 3000 ? log : "..." + log[^3000..])}");
    }

    /// <summary>Holds the install lock (an exclusive lock on a file, released if the holder dies).</summary>
    private static async Task<FileStream> LockAsync()
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return new FileStream(LockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (clock.Elapsed < InstallDeadline)
            {
                await Task.Delay(500);
            }
        }
    }
}
