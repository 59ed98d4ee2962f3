using System.Runtime.InteropServices;

namespace CheckpointEngine.Interop;

/// <summary>
/// Linux futexes on 32-bit words in shared memory: a process sleeps until another changes the word
/// and wakes it, instead of spinning (ranks share few cores with inference workers).
/// </summary>
internal static unsafe partial class Futex
{
    private const int FUTEX_WAIT = 0;
    private const int FUTEX_WAKE = 1;

    private static readonly long SysFutex = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 202,
        Architecture.Arm64 => 98,
        var a => throw new PlatformNotSupportedException($"futex syscall number unknown for {a}"),
    };

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, int* address, int op, int value, Timespec* timeout, nint address2, int value3);

    /// <summary>Sleeps while <c>*address == expected</c>, at most <paramref name="timeoutMs"/> ms (spurious wake-ups are fine: callers re-check).</summary>
    public static void Wait(int* address, int expected, int timeoutMs)
    {
        var t = new Timespec { Seconds = timeoutMs / 1000, Nanoseconds = timeoutMs % 1000 * 1_000_000L };
        _ = Syscall(SysFutex, address, FUTEX_WAIT, expected, &t, 0, 0);
    }

    /// <summary>Wakes every process sleeping on <paramref name="address"/>.</summary>
    public static void WakeAll(int* address) => _ = Syscall(SysFutex, address, FUTEX_WAKE, int.MaxValue, null, 0, 0);
}
