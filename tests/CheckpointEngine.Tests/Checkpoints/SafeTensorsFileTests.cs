using System.Runtime.InteropServices;
using CheckpointEngine.Checkpoints;
using static CheckpointEngine.Tests.Support.RawSafeTensors;

namespace CheckpointEngine.Tests.Checkpoints;

/// <summary>Well-formed files the reader must accept, and reading tensor bytes back.</summary>
public sealed unsafe class SafeTensorsFileTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private SafeTensorsFile OpenRaw(string header, int dataBytes) =>
        SafeTensorsFile.Open(_dir.Write("ok.safetensors", Build(header, dataBytes)));

    [Fact]
    public void Open_EmptyHeaderObject_HasNoTensors()
    {
        using var f = OpenRaw("{}", 0);
        Assert.Empty(f.Tensors);
        Assert.Null(f.Header.Metadata);
        Assert.Equal(10, f.DataStart);
        Assert.Equal(0, f.DataLength);
    }

    [Fact]
    public void Open_ZeroElementTensor_IsAllowed()
    {
        using var f = OpenRaw("{" + Entry("e", "F32", "0,3", 0, 0) + "}", 0);
        var t = Assert.Single(f.Tensors);
        Assert.Equal([0L, 3L], t.Shape);
        Assert.Equal(0, t.ElementCount);
        Assert.Equal(0, t.ByteLength);
        Assert.Equal(0, f.View(t).Span.Length);
    }

    [Fact]
    public void Open_SeveralZeroElementTensorsBetweenOthers_AreAllowed()
    {
        var header = "{" + Entry("a", "U8", "2", 0, 2) + "," + Entry("z1", "F64", "0", 2, 2) + ","
            + Entry("z2", "BF16", "5,0", 2, 2) + "," + Entry("b", "U8", "1", 2, 3) + "," + Entry("z3", "I32", "0", 3, 3) + "}";
        using var f = OpenRaw(header, 3);
        Assert.Equal(5, f.Tensors.Count);
        Assert.Equal(2, f["b"].DataOffset);
        Assert.Equal(2, f["z2"].DataOffset);
        Assert.Equal(3, f["z3"].DataOffset);
    }

    [Fact]
    public void Open_ScalarTensor_IsAllowed()
    {
        using var f = OpenRaw("{" + Entry("s", "F64", "", 0, 8) + "}", 8);
        var t = Assert.Single(f.Tensors);
        Assert.Empty(t.Shape);
        Assert.Equal(1, t.ElementCount);
        Assert.Equal(8, t.ByteLength);
        Assert.Equal("[]", t.ShapeText);
    }

    [Fact]
    public void Open_Metadata_IsKept()
    {
        using var f = OpenRaw("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"ünïcødé \\\"q\\\"\",\"empty\":\"\"}," + Entry("w", "U8", "1", 0, 1) + "}", 1);
        var meta = f.Header.Metadata;
        Assert.NotNull(meta);
        Assert.Equal(3, meta.Count);
        Assert.Equal("pt", meta["format"]);
        Assert.Equal("ünïcødé \"q\"", meta["note"]);
        Assert.Equal("", meta["empty"]);
        Assert.Single(f.Tensors);
        Assert.False(f.Header.TryGetTensor("__metadata__", out _));
    }

    [Fact]
    public void Open_MetadataAfterTensors_IsKept()
    {
        using var f = OpenRaw("{" + Entry("w", "U8", "1", 0, 1) + ",\"__metadata__\":{\"k\":\"v\"}}", 1);
        Assert.Equal("v", f.Header.Metadata!["k"]);
    }

    [Fact]
    public void Open_UnknownTensorFields_AreIgnored()
    {
        var header = "{\"w\":{\"extra\":{\"nested\":[1,2,{\"x\":null}]},\"dtype\":\"I16\",\"note\":\"hi\",\"shape\":[2],\"flag\":true,\"data_offsets\":[0,4],\"n\":1.5}}";
        using var f = OpenRaw(header, 4);
        var t = f["w"];
        Assert.Equal(DType.I16, t.DType);
        Assert.Equal([2L], t.Shape);
        Assert.Equal(4, t.ByteLength);
    }

    [Theory]
    [InlineData("   ")]
    [InlineData(" ")]
    [InlineData("\n\t \r\n")]
    public void Open_TrailingWhitespaceAfterJson_IsAllowed(string padding)
    {
        var header = "{" + Entry("w", "U8", "3", 0, 3) + "}" + padding;
        using var f = OpenRaw(header, 3);
        Assert.Equal(8 + header.Length, f.DataStart);
        Assert.Equal(3, f["w"].ByteLength);
    }

    [Fact]
    public void Open_LeadingWhitespace_IsAllowed()
    {
        using var f = OpenRaw("  {" + Entry("w", "U8", "1", 0, 1) + "}", 1);
        Assert.Single(f.Tensors);
    }

    [Fact]
    public void Open_TensorsOutOfOrderInHeader_AreSortedByOffset()
    {
        var header = "{" + Entry("c", "U8", "1", 6, 7) + "," + Entry("a", "F32", "1", 0, 4) + "," + Entry("b", "I16", "1", 4, 6) + "}";
        using var f = OpenRaw(header, 7);
        Assert.Equal(["a", "b", "c"], f.Tensors.Select(t => t.Name));
    }

    [Fact]
    public void Open_EscapedTensorName_IsUnescaped()
    {
        using var f = OpenRaw("{\"a\\u00e9\\\"b\\\\\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
        Assert.Equal("aé\"b\\", Assert.Single(f.Tensors).Name);
    }

    public static TheoryData<string> AllDTypeNames() => [.. DTypes.Names];

    [Theory]
    [MemberData(nameof(AllDTypeNames))]
    public void Open_EveryDTypeName_RoundTripsThroughRawHeader(string name)
    {
        var dtype = DTypes.Parse(name);
        long[] shape = [2, 4];
        var bytes = (int)dtype.ByteLength(shape);
        using var f = OpenRaw("{" + Entry("t", name, "2,4", 0, bytes) + "}", bytes);
        var t = f["t"];
        Assert.Equal(dtype, t.DType);
        Assert.Equal(name, t.DType.Name());
        Assert.Equal(shape, t.Shape);
        Assert.Equal(bytes, t.ByteLength);
    }

    [Theory]
    [MemberData(nameof(AllDTypeNames))]
    public void Write_EveryDTypeName_RoundTripsThroughWriter(string name)
    {
        var dtype = DTypes.Parse(name);
        long[] shape = [3, 4];
        var data = Enumerable.Range(0, (int)dtype.ByteLength(shape)).Select(i => (byte)(i * 31 + 5)).ToArray();
        var path = _dir.File("w.safetensors");
        SafeTensorsWriter.Write(path, [TensorToWrite.FromBytes("t", dtype, shape, data)]);
        using var f = SafeTensorsFile.Open(path);
        var t = f["t"];
        Assert.Equal(dtype, t.DType);
        Assert.Equal(shape, t.Shape);
        Assert.Equal(data, f.View(t).Span.ToArray());
    }

    [Fact]
    public void DTypesNames_CoverEveryEnumValue()
    {
        Assert.Equal(Enum.GetNames<DType>().Order(StringComparer.Ordinal), DTypes.Names.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Indexer_UnknownName_ThrowsKeyNotFound()
    {
        using var f = OpenRaw("{" + Entry("w", "U8", "1", 0, 1) + "}", 1);
        var ex = Assert.Throws<KeyNotFoundException>(() => f["nope"]);
        Assert.Contains("nope", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ViewAndReadInto_ReturnFileBytes()
    {
        var header = "{" + Entry("a", "F32", "2", 0, 8) + "," + Entry("b", "U8", "5", 8, 13) + "}";
        var raw = Build(header, 13);
        using var f = SafeTensorsFile.Open(_dir.Write("ok.safetensors", raw));
        foreach (var t in f.Tensors)
        {
            var expected = raw.AsSpan((int)(f.DataStart + t.DataOffset), (int)t.ByteLength).ToArray();
            Assert.Equal(expected, f.View(t.Name).Span.ToArray());
            Assert.Equal(t, f.View(t).Info);
            Assert.Equal(t.ByteLength, f.View(t).Length);
            var buffer = new byte[t.ByteLength];
            fixed (byte* p = buffer)
            {
                f.ReadInto(t, 0, t.ByteLength, p);
            }
            Assert.Equal(expected, buffer);
        }
    }

    [Fact]
    public void ReadInto_PartialRange_CopiesThatRange()
    {
        var raw = Build("{" + Entry("b", "U8", "16", 0, 16) + "}", 16);
        using var f = SafeTensorsFile.Open(_dir.Write("ok.safetensors", raw));
        var t = f["b"];
        var buffer = (byte*)NativeMemory.Alloc(16);
        try
        {
            f.ReadInto(t, 5, 7, buffer);
            Assert.Equal(raw.AsSpan((int)f.DataStart + 5, 7).ToArray(), new ReadOnlySpan<byte>(buffer, 7).ToArray());
            f.ReadInto(t, 16, 0, buffer); // An empty read at the end is fine.
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    [Theory]
    [InlineData(-1L, 1L)]
    [InlineData(0L, 17L)]
    [InlineData(10L, 7L)]
    [InlineData(17L, 0L)]
    [InlineData(0L, -1L)]
    [InlineData(long.MaxValue, 1L)]
    [InlineData(1L, long.MaxValue)]
    public void ReadInto_OutOfRange_Throws(long offset, long length)
    {
        using var f = SafeTensorsFile.Open(_dir.Write("ok.safetensors", Build("{" + Entry("b", "U8", "16", 0, 16) + "}", 16)));
        var t = f["b"];
        var buffer = new byte[32];
        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            fixed (byte* p = buffer)
            {
                f.ReadInto(t, offset, length, p);
            }
        });
    }

    [Fact]
    public void ReadInto_FileTruncatedAfterOpen_ThrowsFormatException()
    {
        var path = _dir.Write("ok.safetensors", Build("{" + Entry("b", "U8", "16", 0, 16) + "}", 16));
        using var f = SafeTensorsFile.Open(path);
        using (var s = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete))
        {
            s.SetLength(f.DataStart + 4);
        }
        var buffer = new byte[16];
        var ex = Assert.Throws<CheckpointFormatException>(() =>
        {
            fixed (byte* p = buffer)
            {
                f.ReadInto(f["b"], 0, 16, p);
            }
        });
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("truncated", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Dispose_Twice_IsFine_AndViewsThrowAfter()
    {
        var f = OpenRaw("{" + Entry("w", "U8", "1", 0, 1) + "}", 1);
        _ = f.View("w").Span[0];
        f.Dispose();
        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => (nint)f.DataPointer);
    }

    [Fact]
    public void Open_FileDeletedWhileOpen_StaysReadable()
    {
        var path = _dir.Write("ok.safetensors", Build("{" + Entry("w", "U8", "4", 0, 4) + "}", 4));
        using var f = SafeTensorsFile.Open(path);
        File.Delete(path);
        Assert.Equal(4, f.View("w").Span.Length);
    }
}
