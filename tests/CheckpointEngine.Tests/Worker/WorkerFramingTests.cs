using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

public class WorkerFramingTests
{
    private static MemoryStream Frames(params byte[][] frames) => new([.. frames.SelectMany(f => f)]);

    private static byte[] Frame(string json)
    {
        var bytes = Encoding.UTF8.GetBytes(json);
        var frame = new byte[4 + bytes.Length];
        BinaryPrimitives.WriteInt32LittleEndian(frame, bytes.Length);
        bytes.CopyTo(frame, 4);
        return frame;
    }

    private static string Json(byte[] frame) => Encoding.UTF8.GetString(frame, 4, frame.Length - 4);

    [Fact]
    public async Task RoundTrip_EveryMessage_KeepsEveryField()
    {
        var messages = new WorkerMessage[]
        {
            new AttachMessage("shm", "ckpt-seg", 1 << 20, "host-a-0"),
            new LoadMessage(7, [new WireTensor("w", "BF16", [2, 3], 256, 12, new string('a', 64)), new WireTensor("s", "F32", [], 512, 4)]),
            new ReleaseMessage(),
            new FinishMessage(),
            new AbortMessage("rank 3: out of memory"),
        };
        var stream = new MemoryStream();
        foreach (var m in messages)
        {
            await WorkerFraming.WriteAsync(stream, m, TestContext.Current.CancellationToken);
        }
        stream.Position = 0;
        foreach (var sent in messages)
        {
            var got = await WorkerFraming.ReadAsync<WorkerMessage>(stream, TestContext.Current.CancellationToken);
            Assert.NotNull(got);
            Assert.Equal(sent.GetType(), got.GetType());
            Assert.Equal(JsonSerializer.Serialize(sent), JsonSerializer.Serialize(got));
        }
        Assert.Null(await WorkerFraming.ReadAsync<WorkerMessage>(stream, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void Encode_DerivedRecord_StillWritesTheTypeFirst()
    {
        Assert.Equal("""{"type":"release"}""", Json(WorkerFraming.Encode(new ReleaseMessage())));
        Assert.StartsWith("""{"type":"load","bucket":1,""", Json(WorkerFraming.Encode(new LoadMessage(1, []))), StringComparison.Ordinal);
    }

    [Fact]
    public void Encode_Reply_OmitsErrorWhenOk()
    {
        Assert.Equal("""{"ok":true}""", Json(WorkerFraming.Encode(WorkerReply.Success)));
        Assert.Equal("""{"ok":false,"error":"bad"}""", Json(WorkerFraming.Encode(new WorkerReply(false, "bad"))));
    }

    [Fact]
    public void Encode_ExactlyTheFrameLimit_IsAllowedAndOneByteMoreIsNot()
    {
        var overhead = WorkerFraming.Encode(new AbortMessage("")).Length - 4;
        var frame = WorkerFraming.Encode(new AbortMessage(new string('x', WorkerFraming.MaxFrame - overhead)));
        Assert.Equal(WorkerFraming.MaxFrame, BinaryPrimitives.ReadInt32LittleEndian(frame));
        var e = Assert.Throws<InvalidDataException>(() => WorkerFraming.Encode(new AbortMessage(new string('x', WorkerFraming.MaxFrame - overhead + 1))));
        Assert.Equal("AbortMessage of 67108865 bytes is over the 67108864-byte frame limit", e.Message);
    }

    [Fact]
    public async Task Read_TypeAfterOtherFields_IsAccepted()
    {
        // Python's json.dumps keeps dict order; a sender need not put "type" first.
        var got = await WorkerFraming.ReadAsync<WorkerMessage>(Frames(Frame("""{"reason":"x","type":"abort"}""")), TestContext.Current.CancellationToken);
        Assert.Equal(new AbortMessage("x"), got);
    }

    [Fact]
    public async Task Read_ReplyWithNullError_IsOk()
    {
        var got = await WorkerFraming.ReadAsync<WorkerReply>(Frames(Frame("""{"ok":true,"error":null}""")), TestContext.Current.CancellationToken);
        Assert.Equal(WorkerReply.Success, got);
    }

    public static TheoryData<byte[], string> MalformedFrames() => new()
    {
        { [1, 0], "inside a frame length (2 of 4 bytes)" },
        { [1, 0, 0, 0, (byte)'{'], "frame length 1 is outside" },
        { [2, 0, 0, 0], "connection closed inside a frame (0 of 2 bytes)" }, // 2 is the shortest length allowed: "{}"
        { [0, 0, 0, 4], "connection closed inside a frame (0 of 67108864 bytes)" }, // MaxFrame itself is allowed
        { [1, 0, 0, 4], "frame length 67108865 is outside [2, 67108864]" },
        { [1, 0, 0], "inside a frame length (3 of 4 bytes)" },
        { [0xff, 0xff, 0xff, 0xff], "frame length -1 is outside" },
        { [0, 0, 0, 0x10], "frame length 268435456 is outside" },
        { [10, 0, 0, 0, (byte)'{', (byte)'}'], "inside a frame (2 of 10 bytes)" },
        { Frame("null"), "JSON null" },
        { Frame("{not json"), "not a valid WorkerMessage" },
        { Frame("""{"type":"reload"}"""), "unrecognized type discriminator id 'reload'" },
        { Frame("""{"bucket":1}"""), "must specify a type discriminator" },
        { Frame("""{"type":"load","bucket":1}"""), "missing required properties including: 'tensors'" },
        { Frame("""{"type":"load","bucket":"one","tensors":[]}"""), "(at $.bucket)" },
        { Frame("""{"type":"load","bucket":1,"tensors":[{"name":"w","dtype":"F32","shape":null,"offset":0,"nbytes":4}]}"""), "$.tensors[0].shape" },
        { Frame("""{"type":"abort","reason":null}"""), "doesn't allow null values" },
        { Frame("[1,2]"), "not a valid WorkerMessage" },
    };

    [Theory]
    [MemberData(nameof(MalformedFrames))]
    public async Task Read_MalformedFrame_SaysWhatIsWrong(byte[] bytes, string expected)
    {
        var e = await Assert.ThrowsAsync<InvalidDataException>(() => WorkerFraming.ReadAsync<WorkerMessage>(Frames(bytes), TestContext.Current.CancellationToken));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ReadFrame_BadJson_LeavesTheStreamInStep()
    {
        var stream = Frames(Frame("{oops"), Frame("""{"type":"finish"}"""));
        var first = await WorkerFraming.ReadFrameAsync(stream, TestContext.Current.CancellationToken);
        Assert.Throws<InvalidDataException>(() => WorkerFraming.Decode<WorkerMessage>(first));
        var second = await WorkerFraming.ReadFrameAsync(stream, TestContext.Current.CancellationToken);
        Assert.IsType<FinishMessage>(WorkerFraming.Decode<WorkerMessage>(second));
    }

    [Fact]
    public async Task Read_EmptyStream_ReturnsNull() =>
        Assert.Null(await WorkerFraming.ReadAsync<WorkerReply>(new MemoryStream(), TestContext.Current.CancellationToken));

    /// <summary>Priming builds every frame the protocol has, with each optional field set, and reads it back under the strict options.</summary>
    [Fact]
    public void Prime_EncodesAndDecodesEveryFrame_Twice() => Assert.Null(Record.Exception(() =>
    {
        WorkerFraming.Prime();
        WorkerFraming.Prime();
    }));
}
