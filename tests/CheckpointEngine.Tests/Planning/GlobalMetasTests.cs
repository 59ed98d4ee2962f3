using System.Collections.Immutable;
using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;

namespace CheckpointEngine.Tests.Planning;

public sealed class GlobalMetasTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-metas-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static GlobalMetas Sample() => new("step-7",
    [
        new RankMetas(0, "dev-0", "127.0.0.1:1234", [new BufferMeta(1024, 0x7f00_0000_0000, [
            new ParameterMeta("a.weight", DType.BF16, ImmutableArray.Create(4L, 8), 0, 64) { Crc32 = 0x0badf00d },
            new ParameterMeta("a.scale", DType.F32, ImmutableArray<long>.Empty, 256, 4),
        ])]),
        new RankMetas(1, "dev-1", null, []),
    ]);

    [Fact]
    public void SaveLoad_RoundTrips()
    {
        var path = Path.Combine(_dir, "metas.json");
        Sample().Save(path);
        var loaded = GlobalMetas.Load(path);
        Assert.Equal(Encoding.UTF8.GetString(Sample().ToJson()), Encoding.UTF8.GetString(loaded.ToJson()));
        Assert.Equal(68, loaded.TotalBytes);
        Assert.Equal([0x0badf00du, null], loaded.AllTensors.Select(m => m.Crc32));
        Assert.Contains("\"crc32\":\"0badf00d\"", Encoding.UTF8.GetString(loaded.ToJson()), StringComparison.Ordinal);
        Assert.Equal(64, loaded.LargestTensor);
    }

    [Fact]
    public void Validate_SameTensorOnTwoRanks_NamesBoth()
    {
        var m = Sample();
        var twice = m with { Ranks = [m.Ranks[0], m.Ranks[0] with { Rank = 1 }] };
        var e = Assert.Throws<CheckpointFormatException>(() => twice.Validate("test"));
        Assert.Contains("rank 0 and by rank 1", e.Message);
    }

    [Theory]
    [InlineData("{", "not valid JSON")]
    [InlineData("[]", "'version' is missing")]
    [InlineData("{\"version\":2,\"checkpoint\":\"x\",\"ranks\":[]}", "version 2")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[{\"size\":8,\"address\":0,\"tensors\":[{\"name\":\"t\",\"dtype\":\"Q9\",\"shape\":[],\"offset\":0,\"nbytes\":1}]}]}]}", "unknown dtype 'Q9'")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[{\"size\":8,\"address\":0,\"tensors\":[{\"name\":\"t\",\"dtype\":\"F32\",\"shape\":[4],\"offset\":0,\"nbytes\":16}]}]}]}", "does not fit")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[{\"size\":8,\"address\":0,\"tensors\":[{\"name\":\"t\",\"dtype\":\"F32\",\"shape\":[1],\"offset\":0,\"nbytes\":4,\"crc32\":\"12345\"}]}]}]}", "tensors[0]: 'crc32' must be 8 hex digits, not \"12345\"")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[{\"size\":8,\"address\":0,\"tensors\":[{\"name\":\"t\",\"dtype\":\"F32\",\"shape\":[1],\"offset\":0,\"nbytes\":4,\"crc32\":7}]}]}]}", "'crc32' must be 8 hex digits, not 7")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":3,\"device_id\":\"d\",\"buffers\":[]}]}", "ranks must be listed")]
    public void Parse_BadInput_SaysWhatAndWhere(string json, string expected)
    {
        var e = Assert.Throws<CheckpointFormatException>(() => GlobalMetas.Parse(Encoding.UTF8.GetBytes(json), "metas.json"));
        Assert.Contains("metas.json", e.Message);
        Assert.Contains(expected, e.Message);
    }

    /// <summary>Metas of one rank with one 16-byte buffer holding one tensor.</summary>
    private static string OneTensor(string dtype, string shape, long offset, long nbytes) =>
        "{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[{\"size\":16,\"address\":0,\"tensors\":["
        + $"{{\"name\":\"t\",\"dtype\":\"{dtype}\",\"shape\":[{shape}],\"offset\":{offset},\"nbytes\":{nbytes}}}]}}]}}]}}";

    [Theory]
    [InlineData(0)]
    [InlineData(8)] // Ends exactly at the end of the buffer.
    public void Parse_TensorInsideItsBuffer_Loads(long offset)
    {
        var metas = GlobalMetas.Parse(Encoding.UTF8.GetBytes(OneTensor("F32", "2", offset, 8)), "metas.json");
        var t = Assert.Single(metas.AllTensors);
        Assert.Equal(("t", DType.F32, offset, 8L), (t.Name, t.DType, t.Offset, t.ByteLength));
    }

    [Theory]
    [InlineData("F32", "2", 9, 8, "nbytes 8 at offset 9 does not fit dtype F32, shape [2] in a 16-byte buffer")] // One byte past the end.
    [InlineData("F32", "2", -1, 8, "nbytes 8 at offset -1 does not fit")]
    [InlineData("F32", "2", 0, 4, "nbytes 4 at offset 0 does not fit dtype F32, shape [2]")]
    [InlineData("F32", "-2", 0, 8, "shape has a negative dimension")]
    public void Parse_TensorOutsideItsBufferOrMissized_NamesIt(string dtype, string shape, long offset, long nbytes, string expected)
    {
        var e = Assert.Throws<CheckpointFormatException>(() => GlobalMetas.Parse(Encoding.UTF8.GetBytes(OneTensor(dtype, shape, offset, nbytes)), "metas.json"));
        Assert.Equal("t", e.Tensor);
        Assert.Contains("ranks[0].buffers[0].tensors[0]: " + expected, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"version\":99999999999,\"checkpoint\":\"x\",\"ranks\":[]}", "metas.json: metas hold a number out of range")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":{}}", "metas.json: metas: 'ranks' is missing or not a JSON array")]
    [InlineData("{\"version\":1,\"checkpoint\":7,\"ranks\":[]}", "metas.json: metas: 'checkpoint' is missing or not a JSON string")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[{\"size\":8,\"tensors\":[]}]}]}", "ranks[0].buffers[0]: 'address' is missing")]
    [InlineData("{oops", "metas.json: metas are not valid JSON: ")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[],\"p2p_address\":5}]}", "metas.json: ranks[0]: 'p2p_address' is not a JSON string or null")]
    [InlineData("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[],\"net_device\":[]}]}", "metas.json: ranks[0]: 'net_device' is not a JSON string or null")]
    public void Parse_BadInput_MessageSaysWhere(string json, string expected) =>
        Assert.Contains(expected, Assert.Throws<CheckpointFormatException>(() => GlobalMetas.Parse(Encoding.UTF8.GetBytes(json), "metas.json")).Message, StringComparison.Ordinal);

    [Fact]
    public void Load_MissingFile_SaysItCannotReadIt()
    {
        var path = Path.Combine(_dir, "absent.json");
        var e = Assert.Throws<CheckpointFormatException>(() => GlobalMetas.Load(path));
        Assert.StartsWith($"{path}: cannot read metas: ", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SavedFile_HasEveryFieldAndNoLeftoverTemp()
    {
        var path = Path.Combine(_dir, "metas.json");
        Sample().Save(path);
        var text = File.ReadAllText(path);
        foreach (var field in new[] { "\"version\":1", "\"checkpoint\":\"step-7\"", "\"net_device\"", "\"p2p_address\":\"127.0.0.1:1234\"" })
        {
            Assert.Contains(field, text, StringComparison.Ordinal);
        }
        Assert.False(File.Exists(path + ".tmp"));
    }

    [Fact]
    public void RankJson_RoundTrips()
    {
        var rank = Sample().Ranks[0];
        var back = GlobalMetas.RankFromJson(GlobalMetas.RankToJson(rank), "rank 0");
        Assert.Equal(rank.Buffers[0].Metas.Select(m => (m.Name, m.Offset, m.ByteLength)), back.Buffers[0].Metas.Select(m => (m.Name, m.Offset, m.ByteLength)));
        Assert.Equal("127.0.0.1:1234", back.P2PAddress);
    }

    [Theory]
    [InlineData("", null, null)]
    [InlineData(",\"p2p_address\":null,\"net_device\":null", null, null)]
    [InlineData(",\"p2p_address\":\"10.0.0.1:7\",\"net_device\":\"mlx5_0\"", "10.0.0.1:7", "mlx5_0")]
    public void Parse_OptionalAddresses_AbsentNullOrText(string fields, string? p2p, string? net)
    {
        var rank = GlobalMetas.Parse(Encoding.UTF8.GetBytes("{\"version\":1,\"checkpoint\":\"x\",\"ranks\":[{\"rank\":0,\"device_id\":\"d\",\"buffers\":[]" + fields + "}]}"), "metas.json").Ranks[0];
        Assert.Equal((p2p, net), (rank.P2PAddress, rank.NetDevice));
    }
}
