using System.Buffers.Binary;
using System.Text;

namespace CheckpointEngine.Tests.Support;

/// <summary>A unique directory under the system temp folder, deleted on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    private static readonly Lazy<string> DiskRoot = new(FindDiskRoot);

    /// <param name="root">Where to make it (default: the system temp folder).</param>
    public TempDirectory(string? root = null)
    {
        Path = System.IO.Path.Combine(root ?? System.IO.Path.GetTempPath(), "ckpt-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    /// <summary>A directory whose files are not on tmpfs, so registration must copy them.</summary>
    public static TempDirectory OnDisk() => new(DiskRoot.Value);

    /// <summary>A directory on tmpfs (/dev/shm), whose files can serve as buffers in place.</summary>
    public static TempDirectory InShm() => new("/dev/shm");

    private static string FindDiskRoot()
    {
        // The test binaries live under the repository's artifacts/, which is on a real disk here.
        string[] candidates = [System.IO.Path.GetTempPath(), "/var/tmp", AppContext.BaseDirectory];
        return candidates.FirstOrDefault(d => Directory.Exists(d) && !CheckpointEngine.Interop.Libc.IsOnTmpfs(d))
            ?? throw new InvalidOperationException("no directory outside tmpfs for the copy tests");
    }

    public string Path { get; }

    /// <summary>Full path of <paramref name="name"/> inside the directory (not created).</summary>
    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="name"/> and returns its full path.</summary>
    public string Write(string name, byte[] bytes)
    {
        var path = File(name);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    public string WriteText(string name, string text) => Write(name, Encoding.UTF8.GetBytes(text));

    /// <summary>A new empty subdirectory.</summary>
    public string SubDirectory(string name)
    {
        var path = File(name);
        Directory.CreateDirectory(path);
        return path;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}

/// <summary>Builds raw safetensors bytes from header text, for crafting malformed files.</summary>
internal static class RawSafeTensors
{
    /// <summary>8-byte little-endian header length, the header, then <paramref name="dataBytes"/> bytes of data.</summary>
    public static byte[] Build(string header, int dataBytes = 0, ulong? declaredLength = null) =>
        Build(Encoding.UTF8.GetBytes(header), dataBytes, declaredLength);

    public static byte[] Build(byte[] header, int dataBytes = 0, ulong? declaredLength = null)
    {
        var bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        for (var i = 0; i < dataBytes; i++)
        {
            bytes[8 + header.Length + i] = (byte)(i * 7 + 1);
        }
        return bytes;
    }

    /// <summary>Only the 8-byte length prefix.</summary>
    public static byte[] Prefix(ulong declaredLength)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength);
        return bytes;
    }

    /// <summary>One tensor entry's JSON: <c>"name":{"dtype":..,"shape":[..],"data_offsets":[b,e]}</c>.</summary>
    public static string Entry(string name, string dtype, string shape, long begin, long end) =>
        $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{shape}],\"data_offsets\":[{begin},{end}]}}";
}
