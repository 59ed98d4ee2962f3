using System.Runtime.InteropServices;

namespace CheckpointEngine.Interop;

/// <summary>A native library the chosen backend needs is not on this machine (or lacks a function).</summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : CheckpointEngineException(message, inner);

/// <summary>
/// Loads an optional native library (the CUDA driver, NCCL) on first use, from an explicit path in an
/// environment variable or a list of candidates, and says every place it tried when none loads.
/// </summary>
internal static class NativeLibraries
{
    /// <summary>The candidates, in order: <paramref name="variable"/>'s value if set (then only it), else <paramref name="candidates"/>.</summary>
    public static IReadOnlyList<string> Candidates(string variable, IEnumerable<string> candidates) =>
        Environment.GetEnvironmentVariable(variable) is { Length: > 0 } path ? [path] : [.. candidates];

    /// <param name="fix">What the user can do besides setting <paramref name="variable"/>; default: choose the host backend.</param>
    /// <exception cref="BackendUnavailableException">None loaded; the message lists each path and why.</exception>
    public static nint Load(string what, string variable, IReadOnlyList<string> candidates, string fix = "choose the host backend (--device host)")
    {
        var tried = new List<string>();
        foreach (var path in candidates)
        {
            if (NativeLibrary.TryLoad(path, out var handle))
            {
                return handle;
            }
            tried.Add($"{path} ({Libc.LoadError(path)})");
        }
        throw new BackendUnavailableException(
            $"{what} is not available on this machine: tried {string.Join("; ", tried)}. Set {variable} to its path, or {fix}");
    }

    /// <summary>The address of <paramref name="name"/> in <paramref name="library"/>, or of the first of several versioned names.</summary>
    public static nint Export(nint library, string what, params string[] names)
    {
        foreach (var name in names)
        {
            if (NativeLibrary.TryGetExport(library, name, out var address))
            {
                return address;
            }
        }
        throw new BackendUnavailableException($"{what} has no function {string.Join(" or ", names)}: the installed version is too old");
    }

    /// <summary>Files matching <paramref name="pattern"/> ("dir/*/sub/file") under existing roots: where Python wheels put CUDA libraries.</summary>
    public static IEnumerable<string> Glob(IEnumerable<string> roots, string relative)
    {
        foreach (var root in roots.Where(Directory.Exists))
        {
            IEnumerable<string> found;
            try
            {
                found = Directory.EnumerateDirectories(root, "python3*").Select(d => Path.Combine(d, relative)).Where(File.Exists).ToList();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }
            foreach (var path in found)
            {
                yield return path;
            }
        }
    }
}
