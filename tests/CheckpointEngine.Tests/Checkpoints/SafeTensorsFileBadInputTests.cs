using System.Text;
using CheckpointEngine.Checkpoints;
using static CheckpointEngine.Tests.Support.RawSafeTensors;

namespace CheckpointEngine.Tests.Checkpoints;

/// <summary>Malformed files: each must fail with a <see cref="CheckpointFormatException"/> that names the file and the problem.</summary>
public sealed class SafeTensorsFileBadInputTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private CheckpointFormatException OpenBad(byte[] bytes, string phrase, string? tensor = null)
    {
        var path = _dir.Write("bad.safetensors", bytes);
        var ex = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Equal(path, ex.Source);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains(phrase, ex.Message, StringComparison.Ordinal);
        Assert.Contains(phrase, ex.Problem, StringComparison.Ordinal);
        Assert.Equal(tensor, ex.Tensor);
        if (tensor is not null)
        {
            Assert.Contains($"tensor '{tensor}'", ex.Message, StringComparison.Ordinal);
        }
        return ex;
    }

    private CheckpointFormatException OpenBad(string header, int dataBytes, string phrase, string? tensor = null) =>
        OpenBad(Build(header, dataBytes), phrase, tensor);

    [Fact]
    public void Open_EmptyFile_Throws() => OpenBad([], "file is empty");

    [Fact]
    public void Open_FiveBytes_ThrowsWithoutTheSize()
    {
        var ex = OpenBad([1, 2, 3, 4, 5], "not a safetensors file: shorter than the 8-byte header length");
        Assert.DoesNotContain("5", ex.Problem, StringComparison.Ordinal);
    }

    // The header length is the file's first 8 bytes: a client that names any file must not learn them,
    // nor which bound they break, nor the file's size. One message for every bad length.
    private const string OutOfRange = "not a safetensors file (header length out of range): the first 8 bytes must give the JSON header's length, from 1 to 100000000 and within the file (or the file is truncated)";

    private void OpenOutOfRange(byte[] bytes)
    {
        var ex = OpenBad(bytes, "not a safetensors file (header length out of range)");
        Assert.Equal(0, ex.Offset);
        Assert.Equal(OutOfRange, ex.Problem); // The same words for every length: only the fixed limit is a number in it.
    }

    [Fact]
    public void Open_HeaderLengthPastEndOfFile_IsOutOfRange() => OpenOutOfRange(Build("{}", 0, declaredLength: 100));

    [Fact]
    public void Open_HeaderLengthOneBytePastEndOfFile_IsOutOfRange() => OpenOutOfRange(Build("{}", 0, declaredLength: 3));

    [Fact]
    public void Open_HeaderLengthExactlyAtTheLimit_IsOutOfRangeOfTheFile() => OpenOutOfRange(Build("{}", 0, declaredLength: 100_000_000));

    [Fact]
    public void Open_PrefixOnly_IsOutOfRange() => OpenOutOfRange(Prefix(2));

    [Theory]
    [InlineData(100_000_001UL)]
    [InlineData(ulong.MaxValue)]
    [InlineData(1UL << 63)]
    public void Open_HeaderLengthOverLimit_IsOutOfRange(ulong declared) => OpenOutOfRange(Build("{}", 0, declaredLength: declared));

    [Fact]
    public void Open_HeaderLengthZero_IsOutOfRange() => OpenOutOfRange(Build("", 0));

    [Fact]
    public void Open_HeaderLengthZeroWithData_IsOutOfRange() => OpenOutOfRange(Build("", 16, declaredLength: 0));

    [Fact]
    public void Open_SecretFirstBytes_AreNotInTheError()
    {
        // A shadow-style first line: its first 8 bytes read as a huge header length, which once echoed them.
        var secret = Encoding.ASCII.GetBytes("root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n");
        var n = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(secret);
        var ex = OpenBad(secret, "header length out of range");
        Assert.DoesNotContain(n.ToString(System.Globalization.CultureInfo.InvariantCulture), ex.Problem, StringComparison.Ordinal);
        Assert.DoesNotContain("root", ex.Problem, StringComparison.Ordinal);
        Assert.DoesNotContain(secret.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), ex.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_JsonError_DoesNotQuoteTheFile()
    {
        var ex = OpenBad("{\"a\" Z}", 0, "header is not valid JSON");
        Assert.DoesNotContain("'Z'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_HeaderNotUtf8_Throws() =>
        OpenBad(Build([(byte)'{', (byte)'"', 0xFF, 0xFE, (byte)'"', (byte)':', (byte)'1', (byte)'}']), "header is not valid UTF-8");

    [Fact]
    public void Open_HeaderOverlongUtf8_Throws() =>
        OpenBad(Build([(byte)'{', (byte)'"', 0xC0, 0xAF, (byte)'"', (byte)':', (byte)'1', (byte)'}']), "not valid UTF-8");

    [Theory]
    [InlineData("not json")]
    [InlineData("{")]
    [InlineData("{\"a\":")]
    [InlineData("{\"a\" 1}")]
    [InlineData("{'a':1}")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",}}")]
    [InlineData("{/* comment */}")]
    public void Open_HeaderNotJson_Throws(string header) => OpenBad(header, 0, "header is not valid JSON");

    [Theory]
    [InlineData("[]")]
    [InlineData("[{\"a\":1}]")]
    [InlineData("\"text\"")]
    [InlineData("42")]
    [InlineData("null")]
    public void Open_HeaderNotAnObject_Throws(string header) => OpenBad(header, 0, "header is not a JSON object");

    [Theory]
    [InlineData("{} x")]
    [InlineData("{}{}")]
    [InlineData("{}\0\0")]
    [InlineData("{} []")]
    public void Open_TrailingGarbageAfterObject_Throws(string header) => OpenBad(header, 0, "header is not valid JSON");

    [Fact]
    public void Open_DuplicateTensorName_Throws()
    {
        var header = "{" + Entry("w", "F32", "1", 0, 4) + "," + Entry("w", "F32", "1", 4, 8) + "}";
        OpenBad(header, 8, "duplicate name in header", "w");
    }

    [Fact]
    public void Open_DuplicateMetadata_Throws() =>
        OpenBad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate name in header", "__metadata__");

    [Theory]
    [InlineData("F8_E4M3FN")]
    [InlineData("INT4")]
    [InlineData("f32")]
    [InlineData("float32")]
    [InlineData("")]
    public void Open_UnknownDType_NamesIt(string dtype) =>
        OpenBad("{" + Entry("w", dtype, "4", 0, 4) + "}", 4, $"unknown dtype '{dtype}'", "w");

    [Theory]
    [InlineData("32")]
    [InlineData("null")]
    [InlineData("[\"F32\"]")]
    [InlineData("{\"name\":\"F32\"}")]
    public void Open_DTypeNotAString_Throws(string dtype) =>
        OpenBad("{\"w\":{\"dtype\":" + dtype + ",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is not a string", "w");

    [Fact]
    public void Open_ShapeNegativeDim_Throws() =>
        OpenBad("{" + Entry("w", "F32", "2,-1", 0, 0) + "}", 0, "shape holds a negative number (-1)", "w");

    [Theory]
    [InlineData("1.5")]
    [InlineData("2.0")]
    [InlineData("1e2")]
    public void Open_ShapeFractionalNumber_Throws(string dim) =>
        OpenBad("{" + Entry("w", "U8", dim, 0, 2) + "}", 2, $"shape holds {dim}, not a 64-bit integer", "w");

    [Fact]
    public void Open_ShapeBeyondInt64_Throws() =>
        OpenBad("{" + Entry("w", "U8", "9223372036854775808", 0, 0) + "}", 0, "not a 64-bit integer", "w");

    [Theory]
    [InlineData("\"2\"")]
    [InlineData("null")]
    [InlineData("[2]")]
    public void Open_ShapeNonNumber_Throws(string dim) =>
        OpenBad("{" + Entry("w", "U8", dim, 0, 2) + "}", 2, "shape holds a non-number", "w");

    [Fact]
    public void Open_ShapeNotArray_Throws() =>
        OpenBad("{\"w\":{\"dtype\":\"U8\",\"shape\":2,\"data_offsets\":[0,2]}}", 2, "shape is not an array", "w");

    [Fact]
    public void Open_ShapeElementCountOverflow_Throws() =>
        OpenBad("{" + Entry("w", "F32", "4294967296,4294967296,4", 0, 0) + "}", 0, "element count overflows", "w");

    [Fact]
    public void Open_ShapeByteLengthOverflow_Throws() =>
        OpenBad("{" + Entry("w", "F64", "4611686018427387903", 0, 0) + "}", 0, "byte length overflows", "w");

    [Theory]
    [InlineData("0,4,8", 3)]
    [InlineData("0", 1)]
    [InlineData("", 0)]
    public void Open_DataOffsetsWrongCount_Throws(string offsets, int count) =>
        OpenBad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" + offsets + "]}}", 4,
            $"data_offsets has {count} numbers, expected [begin, end]", "w");

    [Fact]
    public void Open_DataOffsetsNegative_Throws() =>
        OpenBad("{" + Entry("w", "F32", "1", -4, 0) + "}", 4, "data_offsets holds a negative number (-4)", "w");

    [Theory]
    [InlineData("dtype", "{\"shape\":[1],\"data_offsets\":[0,4]}")]
    [InlineData("shape", "{\"dtype\":\"F32\",\"data_offsets\":[0,4]}")]
    [InlineData("data_offsets", "{\"dtype\":\"F32\",\"shape\":[1]}")]
    [InlineData("dtype", "{}")]
    public void Open_MissingField_NamesIt(string field, string entry) =>
        OpenBad("{\"w\":" + entry + "}", 4, $"entry has no '{field}'", "w");

    [Theory]
    [InlineData("[]")]
    [InlineData("\"F32\"")]
    [InlineData("null")]
    public void Open_EntryNotObject_Throws(string entry) => OpenBad("{\"w\":" + entry + "}", 0, "entry is not an object", "w");

    [Fact]
    public void Open_SubByteTensorNotFillingWholeBytes_SaysSoWithItsDTypeAndShape() =>
        OpenBad("{" + Entry("w", "F4", "3", 0, 2) + "}", 2, "3 elements of F4 (4 bits each) do not fill whole bytes (dtype F4, shape [3])", "w");

    [Theory]
    [InlineData("F32", "1", 0, 8, 4)]
    [InlineData("F32", "2", 0, 12, 8)]
    [InlineData("BF16", "3,3", 0, 9, 18)]
    [InlineData("F4", "4", 0, 4, 2)]
    [InlineData("F6_E2M3", "4", 0, 4, 3)]
    [InlineData("F32", "", 0, 0, 4)]
    [InlineData("F32", "0", 0, 4, 0)]
    [InlineData("F32", "2", 4, 8, 8)]
    public void Open_ByteLengthNotShapeTimesDTypeSize_Throws(string dtype, string shape, long begin, long end, long expected)
    {
        var header = "{" + Entry("w", dtype, shape, begin, end) + "}";
        OpenBad(header, (int)end, $"byte length {end - begin} (data_offsets [{begin}, {end}]) is not shape × dtype size = {expected}", "w");
    }

    [Fact]
    public void Open_ReversedOffsets_Throws() =>
        OpenBad("{" + Entry("w", "F32", "2", 8, 0) + "}", 8, "data_offsets are reversed: [8, 0]", "w");

    [Fact]
    public void Open_OffsetsPastEndOfData_Throws() =>
        OpenBad("{" + Entry("w", "F32", "2", 0, 8) + "}", 4, "data_offsets [0, 8] run past the end of the data section (4 bytes)", "w");

    [Fact]
    public void Open_OffsetsPastEndOfData_SecondTensor_Throws()
    {
        var header = "{" + Entry("a", "F32", "1", 0, 4) + "," + Entry("b", "F32", "2", 4, 12) + "}";
        OpenBad(header, 8, "run past the end of the data section (8 bytes)", "b");
    }

    [Fact]
    public void Open_OffsetsHuge_Throws() =>
        OpenBad("{" + Entry("w", "U8", "1", long.MaxValue - 1, long.MaxValue) + "}", 1, "run past the end of the data section", "w");

    [Fact]
    public void Open_OverlappingTensors_Throws()
    {
        var header = "{" + Entry("a", "F32", "2", 0, 8) + "," + Entry("b", "F32", "2", 4, 12) + "}";
        OpenBad(header, 12, "overlap tensor 'a' which ends at 8", "b");
    }

    [Fact]
    public void Open_OverlapByOneByte_Throws()
    {
        var header = "{" + Entry("a", "U8", "4", 0, 4) + "," + Entry("b", "U8", "4", 3, 7) + "}";
        OpenBad(header, 7, "data_offsets [3, 7] overlap tensor 'a' which ends at 4", "b");
    }

    [Fact]
    public void Open_HoleOfOneByte_Throws()
    {
        var header = "{" + Entry("a", "U8", "4", 0, 4) + "," + Entry("b", "U8", "4", 5, 9) + "}";
        OpenBad(header, 9, "hole of 1 bytes in the data section before this tensor (previous data ends at 4)", "b");
    }

    [Fact]
    public void Open_OffsetsOneBytePastEndOfData_Throws() =>
        OpenBad("{" + Entry("w", "U8", "4", 0, 4) + "}", 3, "data_offsets [0, 4] run past the end of the data section (3 bytes)", "w");

    [Fact]
    public void Open_OneByteAtEndBelongsToNoTensor_Throws() =>
        OpenBad("{" + Entry("w", "U8", "4", 0, 4) + "}", 5, "1 bytes at the end of the data section belong to no tensor (tensors end at 4, data section is 5 bytes)");

    [Fact]
    public void Open_IdenticalOffsets_Throws()
    {
        var header = "{" + Entry("a", "F32", "1", 0, 4) + "," + Entry("b", "F32", "1", 0, 4) + "}";
        OpenBad(header, 4, "overlap tensor", "b");
    }

    [Fact]
    public void Open_ZeroElementTensorInsideAnother_Throws()
    {
        var header = "{" + Entry("a", "F32", "2", 0, 8) + "," + Entry("z", "F32", "0", 4, 4) + "}";
        OpenBad(header, 8, "overlap tensor 'a'", "z");
    }

    [Fact]
    public void Open_HoleBetweenTensors_Throws()
    {
        var header = "{" + Entry("a", "F32", "1", 0, 4) + "," + Entry("b", "F32", "1", 8, 12) + "}";
        OpenBad(header, 12, "hole of 4 bytes in the data section before this tensor (previous data ends at 4)", "b");
    }

    [Fact]
    public void Open_HoleAtStart_Throws() =>
        OpenBad("{" + Entry("a", "F32", "1", 4, 8) + "}", 8, "hole of 4 bytes", "a");

    [Fact]
    public void Open_BytesAtEndBelongToNoTensor_Throws() =>
        OpenBad("{" + Entry("a", "F32", "1", 0, 4) + "}", 10, "6 bytes at the end of the data section belong to no tensor");

    [Fact]
    public void Open_DataButNoTensors_Throws() => OpenBad("{}", 3, "3 bytes at the end of the data section belong to no tensor");

    [Theory]
    [InlineData("F4", "3", 2)]
    [InlineData("F4", "1", 1)]
    [InlineData("F4", "3,3", 5)]
    [InlineData("F6_E3M2", "2", 2)]
    [InlineData("F6_E2M3", "", 1)]
    public void Open_SubByteNotWholeBytes_Throws(string dtype, string shape, int dataBytes) =>
        OpenBad("{" + Entry("w", dtype, shape, 0, dataBytes) + "}", dataBytes, "do not fill whole bytes", "w");

    [Theory]
    [InlineData("{\"k\":1}", "__metadata__ value for 'k' is not a string")]
    [InlineData("{\"k\":null}", "__metadata__ value for 'k' is not a string")]
    [InlineData("{\"k\":{\"x\":\"y\"}}", "__metadata__ value for 'k' is not a string")]
    [InlineData("{\"k\":[\"y\"]}", "__metadata__ value for 'k' is not a string")]
    [InlineData("[]", "__metadata__ is not an object of strings")]
    [InlineData("\"pt\"", "__metadata__ is not an object of strings")]
    [InlineData("{\"k\":\"a\",\"k\":\"b\"}", "__metadata__ has duplicate key 'k'")]
    public void Open_BadMetadata_Throws(string metadata, string phrase) =>
        OpenBad("{\"__metadata__\":" + metadata + "}", 0, phrase);

    [Fact]
    public void Open_HeaderNestedTooDeep_Throws()
    {
        var deep = new string('[', 64) + new string(']', 64);
        OpenBad("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":" + deep + "}}", 1, "header is not valid JSON");
    }

    [Theory]
    [InlineData("{\"\\uD800\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}")]
    [InlineData("{\"w\":{\"dtype\":\"\\uDC00\",\"shape\":[1],\"data_offsets\":[0,1]}}")]
    [InlineData("{\"__metadata__\":{\"k\":\"\\uD83D\"}}")]
    [InlineData("{\"__metadata__\":{\"\\uDFFF\":\"v\"}}")]
    public void Open_LoneSurrogateEscape_ThrowsFormatException(string header)
    {
        var path = _dir.Write("bad.safetensors", Build(header, header.Contains("data_offsets", StringComparison.Ordinal) ? 1 : 0));
        var ex = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("header is not valid", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("dtype", "\"F32\"")]
    [InlineData("shape", "[1]")]
    [InlineData("data_offsets", "[0,4]")]
    public void Open_FieldGivenTwice_Throws(string field, string value) =>
        OpenBad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]," + $"\"{field}\":{value}" + "}}", 4,
            $"'{field}' is given twice", "w");

    [Fact]
    public void Open_JsonErrorOnLaterLine_ReportsNoMisleadingOffset()
    {
        var ex = OpenBad("{\n\n\n   \"a\" 1}", 0, "header is not valid JSON");
        Assert.Null(ex.Offset);
    }

    [Fact]
    public void Open_JsonErrorOnFirstLine_ReportsFileOffset()
    {
        var ex = OpenBad("{\"a\" 1}", 0, "header is not valid JSON");
        Assert.Equal(8 + 5, ex.Offset);
    }

    [Theory]
    [InlineData(" []", 0, "header is not a JSON object", null, "[")]
    [InlineData("{\"w\": 7}", 0, "entry is not an object", "w", "7")]
    [InlineData("{\"w\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "dtype is not a string", "w", "7")]
    [InlineData("{\"w\": {\"dtype\": \"Q3\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "unknown dtype 'Q3'", "w", "\"Q3\"")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 4, "shape is not an array", "w", "1,")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, -1], \"data_offsets\": [0, 4]}}", 4, "shape holds a negative number (-1)", "w", "-1")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, \"x\"], \"data_offsets\": [0, 4]}}", 4, "shape holds a non-number", "w", "\"x\"")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [1e30], \"data_offsets\": [0, 4]}}", 4, "not a 64-bit integer", "w", "1e30")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, "data_offsets has 1 numbers", "w", "[0]")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"shape\": [1]}}", 4, "'shape' is given twice", "w", "[1]}")]
    [InlineData("{\"w\":  {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "entry has no 'data_offsets'", "w", "{\"dtype")]
    [InlineData("{\"w\":  {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4, "data_offsets are reversed", "w", "{\"dtype")]
    [InlineData("{\"w\":  {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4, "is not shape × dtype size = 8", "w", "{\"dtype")]
    [InlineData("{\"w\":  {\"dtype\": \"F4\", \"shape\": [3], \"data_offsets\": [0, 1]}}", 1, "do not fill whole bytes", "w", "{\"dtype")]
    [InlineData("{\"__metadata__\": 7}", 0, "__metadata__ is not an object of strings", null, "7")]
    [InlineData("{\"__metadata__\": {\"k\": 7}}", 0, "__metadata__ value for 'k' is not a string", null, "7")]
    [InlineData("{\"__metadata__\": {\"k\": \"a\", \"k\": \"b\"}}", 0, "__metadata__ has duplicate key 'k'", null, "\"b\"")]
    public void Open_BadHeader_ReportsTheByteOffsetOfWhatIsWrong(string header, int dataBytes, string phrase, string? tensor, string culprit)
    {
        var ex = OpenBad(header, dataBytes, phrase, tensor);
        Assert.Equal(8 + Encoding.UTF8.GetByteCount(header[..header.IndexOf(culprit, StringComparison.Ordinal)]), ex.Offset);
    }

    [Fact]
    public void Open_NoSuchFile_Throws()
    {
        var path = _dir.File("missing.safetensors");
        var ex = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("cannot open", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_Directory_Throws()
    {
        var path = _dir.SubDirectory("folder.safetensors");
        var ex = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_ErrorMessage_HasTensorAndOffset()
    {
        var header = "{" + Entry("w", "F32", "1", 0, 4) + "," + Entry("w", "F32", "1", 4, 8) + "}";
        var ex = OpenBad(header, 8, "duplicate name in header", "w");
        var second = Encoding.UTF8.GetBytes(header).AsSpan().LastIndexOf("\"w\""u8);
        Assert.Equal(8 + second, ex.Offset);
        Assert.EndsWith($"(at byte {8 + second})", ex.Message, StringComparison.Ordinal);
    }
}
