using CheckpointEngine.Interop;

namespace CheckpointEngine.Checkpoints;

/// <summary>
/// The directories whose files a client may name (the API's <c>--allow-dir</c>). A path is checked
/// lexically first, so one outside is refused without touching the file system (no probing whether it
/// exists), then with every symbolic link and ".." resolved, and once more on the opened descriptor,
/// so neither links nor a swap after the check lead out.
/// </summary>
public sealed class AllowedDirectories
{
    private readonly string[] _given;
    private readonly string[] _real;

    /// <exception cref="CheckpointEngineException">A directory does not exist or is not a directory.</exception>
    public AllowedDirectories(IEnumerable<string> directories)
    {
        ArgumentNullException.ThrowIfNull(directories);
        var given = new List<string>();
        var real = new List<string>();
        foreach (var d in directories)
        {
            if (string.IsNullOrWhiteSpace(d))
            {
                throw new CheckpointEngineException("an allowed directory is empty");
            }
            var full = Trim(Path.GetFullPath(d));
            var canonical = Posix.RealPath(full, out var errno);
            if (canonical is null || !Directory.Exists(canonical))
            {
                throw new CheckpointEngineException($"allowed directory '{d}' {(canonical is null ? $"cannot be resolved: {Posix.Error(errno)}" : "is not a directory")}");
            }
            given.Add(full);
            real.Add(Trim(canonical));
        }
        if (real.Count == 0)
        {
            throw new CheckpointEngineException("no allowed directories given");
        }
        _given = [.. given];
        _real = [.. real];
    }

    /// <summary>The directories, canonical (symbolic links resolved).</summary>
    public IReadOnlyList<string> Directories => _real;

    public override string ToString() => string.Join(", ", _real);

    /// <summary>
    /// The canonical form of <paramref name="path"/> when it lies inside; null with <paramref name="problem"/>
    /// when it cannot be resolved (the same words whether it is missing or unreadable).
    /// </summary>
    /// <exception cref="PathNotAllowedException">It lies outside, as written or once resolved.</exception>
    public string? Resolve(string path, out string? problem)
    {
        var full = Path.GetFullPath(path);
        if (!Inside(full, _given) && !Inside(full, _real))
        {
            throw new PathNotAllowedException(path, this);
        }
        var canonical = Posix.RealPath(full, out _);
        if (canonical is null)
        {
            problem = "does not exist or cannot be read";
            return null;
        }
        if (!Contains(canonical))
        {
            throw new PathNotAllowedException(path, this);
        }
        problem = null;
        return canonical;
    }

    /// <summary>True when a canonical path lies inside one of the directories.</summary>
    public bool Contains(string canonicalPath) => Inside(canonicalPath, _real);

    private static bool Inside(string path, string[] directories) =>
        directories.Any(d => d == "/" || path == d || path.StartsWith(d + "/", StringComparison.Ordinal));

    private static string Trim(string path) => path.Length > 1 ? path.TrimEnd('/') : path;
}
