using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Tests.Checkpoints;

/// <summary>
/// The allowed directories and the opening of files named from outside, at their edges: the directory
/// itself and a sibling that shares its prefix, a trailing slash, "/", a directory given through a link,
/// a link inside that leads out, a file exactly at the size limit and one byte over.
/// </summary>
public sealed class FileAccessTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Make(string name) => Directory.CreateDirectory(_dir.File(name)).FullName;

    [Fact]
    public void AllowedDirectories_BadLists_AreRefusedNamingTheProblem()
    {
        Assert.Throws<ArgumentNullException>(() => new AllowedDirectories(null!));
        Assert.Equal("no allowed directories given", Assert.Throws<CheckpointEngineException>(() => new AllowedDirectories([])).Message);
        Assert.Equal("an allowed directory is empty", Assert.Throws<CheckpointEngineException>(() => new AllowedDirectories([Make("a"), " "])).Message);
        var missing = _dir.File("missing");
        Assert.Equal($"allowed directory '{missing}' cannot be resolved: No such file or directory",
            Assert.Throws<CheckpointEngineException>(() => new AllowedDirectories([missing])).Message);
        var file = _dir.WriteText("file", "x");
        Assert.Equal($"allowed directory '{file}' is not a directory", Assert.Throws<CheckpointEngineException>(() => new AllowedDirectories([file])).Message);
    }

    [Fact]
    public void Resolve_TheDirectoryAndItsFiles_AreInside_ASiblingSharingItsPrefixIsNot()
    {
        var dir = Make("data");
        var sibling = Make("data2");
        var inside = _dir.WriteText("data/x.safetensors", "x");
        var outside = _dir.WriteText("data2/x.safetensors", "x");
        var allowed = new AllowedDirectories([dir]);
        Assert.Equal(dir, allowed.ToString());
        Assert.Equal(inside, allowed.Resolve(inside, out var problem));
        Assert.Null(problem);
        Assert.Equal(dir, allowed.Resolve(dir, out _));
        Assert.Equal($"'{outside}' is outside the allowed directories ({dir})", Assert.Throws<PathNotAllowedException>(() => allowed.Resolve(outside, out _)).Message);
        Assert.Throws<PathNotAllowedException>(() => allowed.Resolve(sibling, out _));
        Assert.Null(allowed.Resolve(Path.Combine(dir, "nothing"), out problem));
        Assert.Equal("does not exist or cannot be read", problem);
    }

    [Fact]
    public void Resolve_SeveralDirectories_APathInsideAnyOneIsInside_AndTheListReadsInOrder()
    {
        var (a, b) = (Make("a"), Make("b"));
        var allowed = new AllowedDirectories([a, b]);
        Assert.Equal($"{a}, {b}", allowed.ToString());
        Assert.Equal([a, b], allowed.Directories);
        Assert.NotNull(allowed.Resolve(_dir.WriteText("a/f", "x"), out _));
        Assert.NotNull(allowed.Resolve(_dir.WriteText("b/f", "x"), out _));
        Assert.Throws<PathNotAllowedException>(() => allowed.Resolve(_dir.WriteText("f", "x"), out _));
    }

    [Fact]
    public void Resolve_ADirectoryGivenWithATrailingSlash_OrRoot_CoversWhatLiesBelow()
    {
        var dir = Make("data");
        var file = _dir.WriteText("data/f", "x");
        var slashed = new AllowedDirectories([dir + "/"]);
        Assert.Equal(dir, slashed.ToString());
        Assert.Equal(file, slashed.Resolve(file, out _));
        var root = new AllowedDirectories(["/"]);
        Assert.Equal("/", root.ToString());
        Assert.Equal(file, root.Resolve(file, out _));
        Assert.True(root.Contains("/etc"));
    }

    [Fact]
    public void Resolve_ADirectoryGivenThroughALink_AcceptsPathsWrittenEitherWay_ALinkInsideThatLeadsOutIsRefused()
    {
        var real = Make("real");
        var link = _dir.File("link");
        File.CreateSymbolicLink(link, real);
        var file = _dir.WriteText("real/f", "x");
        var escape = Path.Combine(real, "escape");
        File.CreateSymbolicLink(escape, _dir.WriteText("secret", "x"));
        var allowed = new AllowedDirectories([link]);
        Assert.Equal(real, allowed.ToString()); // Canonical.
        Assert.Equal(file, allowed.Resolve(Path.Combine(link, "f"), out _)); // As written: inside the given directory.
        Assert.Equal(file, allowed.Resolve(file, out _)); // As resolved: inside the real one.
        Assert.Throws<PathNotAllowedException>(() => allowed.Resolve(escape, out _));
        Assert.Throws<PathNotAllowedException>(() => allowed.Resolve(Path.Combine(link, "escape"), out _));
    }

    [Fact]
    public void TryOpenRead_SaysWhyAPathIsNotARegularFile()
    {
        Assert.Throws<ArgumentNullException>(() => RegularFile.TryOpenRead(null!, null, out _));
        var dir = Make("d");
        var file = _dir.WriteText("f", "x");
        var loop = _dir.File("loop");
        File.CreateSymbolicLink(loop, loop);
        foreach (var (path, expected) in new[]
        {
            (_dir.File("missing"), "does not exist"),
            (Path.Combine(file, "child"), "does not exist"), // ENOTDIR
            (dir, "is a directory"),
            ("/dev/null", "is not a regular file (a character device)"),
            (loop, "cannot be opened (Too many levels of symbolic links)"),
        })
        {
            Assert.Null(RegularFile.TryOpenRead(path, null, out var problem));
            Assert.Equal(expected, problem);
        }
        using var handle = RegularFile.TryOpenRead(file, null, out var none);
        Assert.NotNull(handle);
        Assert.Null(none);
    }

    [Fact]
    public void TryOpenRead_InsideAllowedDirectories_AMissingFileSaysNoMoreThanThat_AndTheHandleOwnsItsDescriptor()
    {
        var dir = Make("data");
        var allowed = new AllowedDirectories([dir]);
        Assert.Null(RegularFile.TryOpenRead(Path.Combine(dir, "missing"), allowed, out var problem));
        Assert.Equal("does not exist or cannot be read", problem);
        var e = Assert.Throws<CheckpointFormatException>(() => RegularFile.ReadAllBytes(Path.Combine(dir, "missing"), 10, allowed));
        Assert.Contains("cannot open: the file does not exist or cannot be read", e.Message);

        var file = _dir.WriteText("data/f", "x");
        var handle = RegularFile.TryOpenRead(file, allowed, out _)!;
        var fd = handle.DangerousGetHandle();
        Assert.Equal(file, new FileInfo($"/proc/self/fd/{fd}").LinkTarget);
        handle.Dispose(); // Closes the descriptor.
        Assert.NotEqual(file, new FileInfo($"/proc/self/fd/{fd}").LinkTarget);
    }

    [Fact]
    public void ReadAllBytes_AFileExactlyAtTheLimitIsRead_OneByteMoreIsRefused()
    {
        var file = _dir.Write("f", [1, 2, 3, 4]);
        Assert.Equal([1, 2, 3, 4], RegularFile.ReadAllBytes(file, 4));
        var e = Assert.Throws<CheckpointFormatException>(() => RegularFile.ReadAllBytes(file, 3));
        Assert.Contains("is larger than the 3-byte limit for this kind of file", e.Message);
        Assert.Empty(RegularFile.ReadAllBytes(_dir.Write("empty", []), 0));
    }

    [Fact]
    public void PortableOpen_WhereThereIsNoStatx_SaysWhatTheRuntimeSays()
    {
        Assert.Null(RegularFile.PortableOpen(_dir.File("missing"), out var problem));
        Assert.Equal("does not exist", problem);
        Assert.Null(RegularFile.PortableOpen(Path.Combine(_dir.File("nodir"), "f"), out problem));
        Assert.Equal("does not exist", problem);
        Assert.Null(RegularFile.PortableOpen(Make("d"), out problem));
        Assert.StartsWith("cannot be opened (", problem);
        using var handle = RegularFile.PortableOpen(_dir.WriteText("f", "x"), out problem);
        Assert.NotNull(handle);
        Assert.Null(problem);
    }
}
