using System.Text;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Tests.Checkpoints;

public sealed class SafeTensorsWriterTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static TensorToWrite Bytes(string name, DType dtype, long[] shape) =>
        TensorToWrite.FromBytes(name, dtype, shape, Enumerable.Range(0, (int)dtype.ByteLength(shape)).Select(i => (byte)i).ToArray());

    [Fact]
    public void Write_NoTensors_OpensEmpty()
    {
        var path = _dir.File("e.safetensors");
        SafeTensorsWriter.Write(path, []);
        using var f = SafeTensorsFile.Open(path);
        Assert.Empty(f.Tensors);
        Assert.Null(f.Header.Metadata);
        Assert.Equal(0, f.DataLength);
    }

    [Fact]
    public void Write_HeaderIsPaddedWithSpacesToEightBytes()
    {
        var path = _dir.File("p.safetensors");
        SafeTensorsWriter.Write(path, [Bytes("abc", DType.U8, [3])]);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(0, f.DataStart % 8);
        var header = File.ReadAllBytes(path).AsSpan(8, (int)f.Header.HeaderLength);
        var text = Encoding.UTF8.GetString(header);
        Assert.Equal(text.TrimEnd(' ').Length + (int)((8 - text.TrimEnd(' ').Length % 8) % 8), text.Length);
    }

    [Fact]
    public void Write_LaysOutByDescendingAlignmentThenName()
    {
        var path = _dir.File("o.safetensors");
        SafeTensorsWriter.Write(path, [
            Bytes("u8", DType.U8, [3]),
            Bytes("f4", DType.F4, [2]),
            Bytes("b_f64", DType.F64, [1]),
            Bytes("a_f64", DType.F64, [2]),
            Bytes("bf16", DType.BF16, [3]),
            Bytes("f32", DType.F32, [1]),
            Bytes("c64", DType.C64, [1]),
        ]);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(["a_f64", "b_f64", "c64", "f32", "bf16", "f4", "u8"], f.Tensors.Select(t => t.Name));
        foreach (var t in f.Tensors)
        {
            Assert.Equal(0, (f.DataStart + t.DataOffset) % t.DType.Alignment());
        }
    }

    [Fact]
    public void Write_Metadata_IsWrittenSorted_AndReadBack()
    {
        var path = _dir.File("m.safetensors");
        SafeTensorsWriter.Write(path, [Bytes("w", DType.U8, [1])], new Dictionary<string, string> { ["z"] = "1", ["a"] = "ü\"\\" });
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(new Dictionary<string, string> { ["a"] = "ü\"\\", ["z"] = "1" }, f.Header.Metadata);
    }

    [Fact]
    public void Write_DuplicateNames_Throws()
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(_dir.File("d.safetensors"), [Bytes("w", DType.U8, [1]), Bytes("w", DType.F32, [1])]));
        Assert.Contains("'w'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Write_MetadataKeyAsTensorName_Throws()
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(_dir.File("d.safetensors"), [Bytes("__metadata__", DType.U8, [1])]));
        Assert.Contains("__metadata__", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Write_WrongByteCountFromCallback_Throws()
    {
        var t = new TensorToWrite("w", DType.F32, [2], s => s.Write(new byte[7]));
        var ex = Assert.Throws<InvalidOperationException>(() => SafeTensorsWriter.Write(_dir.File("b.safetensors"), [t]));
        Assert.Contains("wrote 7 bytes", ex.Message, StringComparison.Ordinal);
        Assert.Contains("need 8", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Write_InvalidShape_Throws()
    {
        var t = new TensorToWrite("w", DType.F4, [3], _ => { });
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(_dir.File("s.safetensors"), [t]));
    }

    [Fact]
    public void Write_UnusualNames_RoundTrip()
    {
        string[] names = ["", " ", "層.重み", "quote\"d", "back\\slash", "new\nline", "tab\t", "emoji😀", "</script>", "a.b.c"];
        var path = _dir.File("n.safetensors");
        SafeTensorsWriter.Write(path, names.Select((n, i) => Bytes(n, DType.U8, [i + 1])));
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(names.Order(StringComparer.Ordinal), f.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        for (var i = 0; i < names.Length; i++)
        {
            Assert.Equal(i + 1, f[names[i]].ByteLength);
        }
    }

    [Fact]
    public void Write_OverwritesExistingFile()
    {
        var path = _dir.File("x.safetensors");
        SafeTensorsWriter.Write(path, [Bytes("big", DType.F64, [100])]);
        SafeTensorsWriter.Write(path, [Bytes("small", DType.U8, [1])]);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal("small", Assert.Single(f.Tensors).Name);
    }
}
