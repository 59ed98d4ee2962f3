using System.Diagnostics;
using CheckpointEngine.Memory;
using CheckpointEngine.Runtime.Devices;
using CheckpointEngine.Tests.Support;

namespace CheckpointEngine.Tests.Memory;

/// <summary>
/// Device segments on a shared host: owner-only and unguessable, so another user can neither read nor
/// find them; and the sweep of crashed creators' segments never touches a live one, whatever PID
/// namespace its creator runs in.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class SharedMemorySecurityTests
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    [Fact]
    public void DeviceSegments_AreOwnerOnly_WithUnpredictableNames()
    {
        using var device = new HostDevice("shm-test", freeMemory: 1 << 20);
        using var a = device.AllocateShared(4096);
        using var b = device.AllocateShared(4096);

        foreach (var buffer in new[] { a, b })
        {
            Assert.Matches("^ckpt-engine-dev-[0-9a-f]{32}$", buffer.Handle);
            Assert.DoesNotContain(Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), buffer.Handle, StringComparison.Ordinal);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(SharedMemorySegment.Directory, buffer.Handle)));
        }
        Assert.NotEqual(a.Handle, b.Handle);
    }

    [Fact]
    public async Task AnotherUser_CannotReadADeviceSegment()
    {
        using var device = new HostDevice("shm-test", freeMemory: 1 << 20);
        using var buffer = device.AllocateShared(4096);
        await using var reader = OtherUser.StartPython("""
            import sys
            try:
                print("read %d bytes" % len(open(sys.argv[1], "rb").read()))
            except PermissionError:
                print("permission denied")
            """, Path.Combine(SharedMemorySegment.Directory, buffer.Handle));

        Assert.Equal("permission denied", await reader.ReadLineAsync(Deadline));
    }

    [Fact]
    public async Task Sweep_RemovesOnlyUnlockedOldSegmentsOfThisUser_NeverOneWhoseCreatorLives()
    {
        var abandoned = Make("abandoned", age: TimeSpan.FromHours(1));
        var young = Make("young", age: TimeSpan.Zero);
        var live = Make("live", age: TimeSpan.FromHours(1));
        var fifo = Path.Combine(SharedMemorySegment.Directory, SharedMemorySegment.NewName("fifo"));
        Assert.Equal(0, (await TestProcess.RunAsync("mkfifo", [fifo], Deadline)).Code);
        // The live one's creator is another process: the sweep goes by its lock, not by its pid (which
        // another PID namespace sharing /dev/shm would not show).
        var holder = StartLockHolder(live);
        try
        {
            var said = await holder.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(Deadline, TestContext.Current.CancellationToken);
            Assert.Equal("locked", said);

            SharedMemorySegment.SweepAbandoned(TimeSpan.FromMinutes(1)); // Would block on the FIFO if it opened it.

            Assert.False(File.Exists(abandoned), "an old segment nobody holds is swept");
            Assert.True(File.Exists(young), "a segment younger than the minimum age is kept (its creator may not hold the lock yet)");
            Assert.True(File.Exists(live), "a segment whose creator lives is kept");
            Assert.True(File.Exists(fifo), "only regular files are swept");

            holder.Kill(entireProcessTree: true);
            await holder.WaitForExitAsync(TestContext.Current.CancellationToken);
            SharedMemorySegment.SweepAbandoned(TimeSpan.FromMinutes(1));
            Assert.False(File.Exists(live), "once its creator died, it is swept");
        }
        finally
        {
            if (!holder.HasExited)
            {
                holder.Kill(entireProcessTree: true);
            }
            holder.Dispose();
            foreach (var path in new[] { abandoned, young, live, fifo })
            {
                File.Delete(path);
            }
        }
    }

    private static string Make(string kind, TimeSpan age)
    {
        var path = Path.Combine(SharedMemorySegment.Directory, SharedMemorySegment.NewName(kind));
        File.WriteAllBytes(path, [1, 2, 3]);
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow - age);
        return path;
    }

    /// <summary>A process that takes the creator's shared lock on <paramref name="path"/>, prints "locked" and waits.</summary>
    private static Process StartLockHolder(string path)
    {
        var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (string[])["-u", "-c", "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_SH); print('locked'); time.sleep(120)", path])
        {
            psi.ArgumentList.Add(a);
        }
        return Process.Start(psi)!;
    }
}
