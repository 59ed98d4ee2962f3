using System.Runtime.InteropServices;

namespace CheckpointEngine.Cli.Bench;

/// <summary>The machine a benchmark ran on, as a report states it.</summary>
internal sealed record MachineInfo(int Cores, long MemoryBytes, string Cpu, string Os, string Kernel, string Dotnet)
{
    /// <summary>Writes the machine as the "machine" object of a report's JSON.</summary>
    public void WriteJson(System.Text.Json.Utf8JsonWriter w)
    {
        w.WriteStartObject("machine");
        w.WriteNumber("cores", Cores);
        w.WriteNumber("memory_bytes", MemoryBytes);
        w.WriteString("cpu", Cpu);
        w.WriteString("os", Os);
        w.WriteString("kernel", Kernel);
        w.WriteString("dotnet", Dotnet);
        w.WriteEndObject();
    }

    public static MachineInfo Current() => new(
        Environment.ProcessorCount,
        ProcField("/proc/meminfo", "MemTotal:") is { } kb && long.TryParse(kb.Split(' ')[0], out var n) ? n * 1024 : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes,
        ProcField("/proc/cpuinfo", "model name") is { } cpu ? cpu.TrimStart(':', ' ', '\t') : RuntimeInformation.ProcessArchitecture.ToString(),
        ProcField("/etc/os-release", "PRETTY_NAME=") is { } os ? os.Trim('"') : RuntimeInformation.OSDescription,
        OperatingSystem.IsLinux() && ProcField("/proc/sys/kernel/osrelease", "") is { Length: > 0 } release ? "Linux " + release : RuntimeInformation.OSDescription,
        RuntimeInformation.FrameworkDescription);

    /// <summary>The rest of the first line of <paramref name="file"/> that starts with <paramref name="key"/>, trimmed.</summary>
    private static string? ProcField(string file, string key)
    {
        try
        {
            return File.ReadLines(file).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal))?[key.Length..].Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
