using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using CheckpointEngine.Checkpoints;
using CsCheck;

namespace CheckpointEngine.Tests.Checkpoints;

/// <summary>Writer → reader round trips and header fuzzing, as CsCheck properties.</summary>
public sealed unsafe class SafeTensorsPropertyTests : IDisposable
{
    private const int Iterations = 100;

    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    public sealed record GenTensor(string Name, DType DType, long[] Shape, byte[] Data)
    {
        public override string ToString() => $"{Name}:{DType}[{string.Join(",", Shape)}]";
    }

    private static readonly string[] NamePrefixes = ["w", "model.layers.0.weight", "層", "q\"uote", "back\\", "sp ace", "😀", ""];

    /// <summary>A shape the dtype can fill with whole bytes: sub-byte types get a trailing dimension of 4.</summary>
    private static long[] FitShape(DType dtype, long[] shape) =>
        dtype.TryByteLength(shape, out _, out _) ? shape : [.. shape, 4];

    private static readonly Gen<(DType DType, long[] Shape)> GenDTypeAndShape =
        Gen.Select(Gen.Enum<DType>(), Gen.Long[0, 5].Array[0, 3], (d, s) => (d, FitShape(d, s)));

    private static readonly Gen<GenTensor[]> GenTensors =
        GenDTypeAndShape
            .SelectMany(ds => Gen.Byte.Array[(int)ds.DType.ByteLength(ds.Shape)], (ds, data) => (ds.DType, ds.Shape, data))
            .Select(Gen.OneOf(NamePrefixes), (t, prefix) => (t.DType, t.Shape, t.data, prefix))
            .Array[0, 10]
            .Select(ts => ts.Select((t, i) => new GenTensor($"{t.prefix}{i}", t.DType, t.Shape, t.data)).ToArray());

    private static readonly Gen<Dictionary<string, string>?> GenMetadata =
        Gen.Frequency(
            (1, Gen.Const((Dictionary<string, string>?)null)),
            (2, Gen.Select(GenText(6), GenText(12)).Array[0, 4]
                .Select(kvs => (Dictionary<string, string>?)kvs.DistinctBy(kv => kv.Item1).ToDictionary(kv => kv.Item1, kv => kv.Item2))));

    private static Gen<string> GenText(int maxLength) => Gen.Char["ab_.ü層 \"\\\n\t\0"].Array[0, maxLength].Select(cs => new string(cs));

    private string NewPath() => _dir.File(Guid.NewGuid().ToString("N") + ".safetensors");

    [Fact]
    public void WriteThenOpen_RandomTensors_RoundTrip()
    {
        Gen.Select(GenTensors, GenMetadata).Sample((tensors, metadata) =>
        {
            var path = NewPath();
            try
            {
                SafeTensorsWriter.Write(path, tensors.Select(t => TensorToWrite.FromBytes(t.Name, t.DType, t.Shape, t.Data)), metadata);
                using var f = SafeTensorsFile.Open(path);
                Assert.Equal(tensors.Length, f.Tensors.Count);
                Assert.Equal(new FileInfo(path).Length, f.FileLength);
                Assert.Equal(tensors.Sum(t => (long)t.Data.Length), f.DataLength);
                if (metadata is null)
                {
                    Assert.Null(f.Header.Metadata);
                }
                else
                {
                    Assert.Equal(metadata, f.Header.Metadata);
                }
                foreach (var expected in tensors)
                {
                    var t = f[expected.Name];
                    Assert.Equal(expected.Name, t.Name);
                    Assert.Equal(expected.DType, t.DType);
                    Assert.Equal(expected.Shape, t.Shape);
                    Assert.Equal(expected.Data.Length, t.ByteLength);
                    Assert.Equal(0, (f.DataStart + t.DataOffset) % t.DType.Alignment());
                    Assert.True(expected.Data.AsSpan().SequenceEqual(f.View(t).Span));

                    var buffer = (byte*)NativeMemory.Alloc((nuint)Math.Max(1, expected.Data.Length));
                    try
                    {
                        f.ReadInto(t, 0, t.ByteLength, buffer);
                        Assert.True(expected.Data.AsSpan().SequenceEqual(new ReadOnlySpan<byte>(buffer, expected.Data.Length)));
                        if (t.ByteLength > 1)
                        {
                            var from = t.ByteLength / 3;
                            f.ReadInto(t, from, t.ByteLength - from, buffer);
                            Assert.True(expected.Data.AsSpan((int)from).SequenceEqual(new ReadOnlySpan<byte>(buffer, (int)(t.ByteLength - from))));
                        }
                    }
                    finally
                    {
                        NativeMemory.Free(buffer);
                    }
                }
                // Offsets tile the data section in order.
                long next = 0;
                foreach (var t in f.Tensors)
                {
                    Assert.Equal(next, t.DataOffset);
                    next += t.ByteLength;
                }
                Assert.Equal(f.DataLength, next);
            }
            finally
            {
                File.Delete(path);
            }
        }, iter: Iterations);
    }

    [Fact]
    public void DTypeAndShapeGen_CoversSubByteScalarsAndZeroDims()
    {
        // Guards the generator itself: the round trip must actually see these cases.
        var samples = Enumerable.Range(0, 2000).Select(_ => GenDTypeAndShape.Single()).ToList();
        Assert.Contains(samples, s => s.DType == DType.F4);
        Assert.Contains(samples, s => s.DType is DType.F6_E2M3 or DType.F6_E3M2);
        Assert.Contains(samples, s => s.Shape.Length == 0);
        Assert.Contains(samples, s => s.Shape.Contains(0));
        Assert.All(samples, s => Assert.True(s.DType.TryByteLength(s.Shape, out _, out _)));
    }

    /// <summary>A valid file with several tensors and metadata, used as the seed for mutations.</summary>
    private byte[] SeedFile()
    {
        var path = NewPath();
        SafeTensorsWriter.Write(path, [
            TensorToWrite.FromBytes("model.embed.weight", DType.BF16, [4, 3], new byte[24]),
            TensorToWrite.FromBytes("scale", DType.F32, [], new byte[4]),
            TensorToWrite.FromBytes("empty", DType.F16, [0, 3], Array.Empty<byte>()),
            TensorToWrite.FromBytes("nibbles", DType.F4, [2, 3], new byte[3]),
            TensorToWrite.FromBytes("ids", DType.I64, [2], new byte[16]),
            TensorToWrite.FromBytes("mask", DType.BOOL, [5], new byte[5]),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        var bytes = File.ReadAllBytes(path);
        File.Delete(path);
        return bytes;
    }

    /// <summary>Open must succeed or fail with <see cref="CheckpointFormatException"/>; on success every tensor lies inside the file.</summary>
    private void AssertOpenIsSafe(byte[] bytes)
    {
        var path = NewPath();
        try
        {
            File.WriteAllBytes(path, bytes);
            SafeTensorsFile f;
            try
            {
                f = SafeTensorsFile.Open(path);
            }
            catch (CheckpointFormatException e)
            {
                Assert.Contains(path, e.Message, StringComparison.Ordinal);
                return;
            }
            using (f)
            {
                foreach (var t in f.Tensors)
                {
                    Assert.True(t.DataOffset >= 0 && t.ByteLength >= 0);
                    Assert.True(f.DataStart + t.DataOffset + t.ByteLength <= f.FileLength);
                    Assert.Equal(t.ByteLength, f.View(t).Span.Length);
                }
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Tokens that reach the parser's deeper checks when spliced into a header.</summary>
    private static readonly byte[][] Snippets = [.. new[]
    {
        "\\uD800", "\\uDC00x", "\"dtype\":", "\"F4\"", "\"F8_E4M3FN\"", "[0,", "-1", "1.5", "9223372036854775807",
        "\"__metadata__\":{\"k\":1},", "\"shape\":[]", "\"data_offsets\":[0,0]", "{}", "[[[[", "\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},",
    }.Select(Encoding.UTF8.GetBytes)];

    private static readonly byte[] JsonBytes = Encoding.ASCII.GetBytes("{}[],:\"\\ -.0123456789eEuU_FIBD\0\n");

    [Fact]
    public void Open_MutatedHeaderBytes_OnlyThrowsFormatException()
    {
        var seed = SeedFile();
        var headerEnd = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(seed);
        var genByte = Gen.Frequency((1, Gen.Byte), (2, Gen.OneOf(JsonBytes)));
        Gen.Select(Gen.Int[0, headerEnd - 1], genByte).Array[1, 6].Sample(edits =>
        {
            var bytes = (byte[])seed.Clone();
            foreach (var (at, value) in edits)
            {
                bytes[at] = value;
            }
            AssertOpenIsSafe(bytes);
        }, iter: Iterations * 3);
    }

    [Fact]
    public void Open_SplicedHeaderWithFixedLength_OnlyThrowsFormatException()
    {
        // Replace a slice of the JSON with random JSON-ish text and fix up the length prefix, so the
        // parser (rather than the length checks) sees the damage.
        var seed = SeedFile();
        var headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(seed);
        var header = seed.AsSpan(8, headerLength).ToArray();
        var data = seed.AsSpan(8 + headerLength).ToArray();
        var genText = Gen.Frequency(
            (3, Gen.Frequency((1, Gen.Byte), (4, Gen.OneOf(JsonBytes))).Array[0, 8]),
            (1, Gen.OneOf(Snippets)));
        Gen.Select(Gen.Int[0, headerLength], Gen.Int[0, 6], genText, Gen.Int[-3, 3]).Sample((at, cut, text, dataDelta) =>
        {
            var end = Math.Min(headerLength, at + cut);
            var newHeader = header[..at].Concat(text).Concat(header[end..]).ToArray();
            var newData = dataDelta >= 0 ? data.Concat(new byte[dataDelta]).ToArray() : data[..Math.Max(0, data.Length + dataDelta)];
            var bytes = new byte[8 + newHeader.Length + newData.Length];
            BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)newHeader.Length);
            newHeader.CopyTo(bytes, 8);
            newData.CopyTo(bytes, 8 + newHeader.Length);
            AssertOpenIsSafe(bytes);
        }, iter: Iterations * 3);
    }

    [Fact]
    public void Open_TruncatedFile_OnlyThrowsFormatException()
    {
        var seed = SeedFile();
        Gen.Int[0, seed.Length - 1].Sample(length =>
        {
            var path = NewPath();
            try
            {
                File.WriteAllBytes(path, seed[..length]);
                var ex = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(path).Dispose());
                Assert.Contains(path, ex.Message, StringComparison.Ordinal);
            }
            finally
            {
                File.Delete(path);
            }
        }, iter: Iterations);
    }

    [Fact]
    public void Parse_RandomBytes_OnlyThrowsFormatException()
    {
        Gen.Byte.Array[0, 64].Sample(json =>
        {
            try
            {
                SafeTensorsHeader.Parse(json, 0, "fuzz");
            }
            catch (CheckpointFormatException e)
            {
                Assert.Equal("fuzz", e.Source);
            }
        }, iter: Iterations * 5);
    }
}
