using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Tests.Support;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

public sealed class WeightReceiverTests : IDisposable
{
    private static readonly TimeSpan Idle = TimeSpan.FromSeconds(5);

    private readonly FakeParameterServer _ps = FakeParameterServer.Start();

    public void Dispose() => _ps.Dispose();

    private static readonly TestTensor[] Tensors =
    [
        TestTensor.Random("model.layers.0.self_attn.q_proj.weight", DType.BF16, [8, 16]),
        TestTensor.Random("model.layers.0.input_layernorm.weight", DType.F32, [16]),
        TestTensor.Random("model.scale", DType.F32, []),
        TestTensor.Random("model.empty", DType.F16, [0, 4]),
        TestTensor.Random("model.layers.0.mlp.down_proj.weight", DType.F8_E4M3, [16, 8]),
        TestTensor.Random("model.packed", DType.F4, [6]),
    ];

    /// <summary>Runs a receiver that copies out every tensor it is handed, keyed by name.</summary>
    private (Task<ReceiveSummary> Task, Dictionary<string, (int Bucket, TensorInfo Info, byte[] Bytes)> Got) Receive(
        BucketHandler? handler = null, Func<CancellationToken, ValueTask>? postLoad = null, TimeSpan? idle = null, string? address = null,
        Action<SocketException>? connectRetrying = null)
    {
        var got = new Dictionary<string, (int, TensorInfo, byte[])>();
        handler ??= (bucket, tensors) =>
        {
            foreach (var t in tensors)
            {
                got.Add(t.Name, (bucket, new TensorInfo(t.Name, t.DType, t.Shape, t.Offset, t.Length), t.Span.ToArray()));
            }
        };
        var task = WeightReceiver.ReceiveAsync(address ?? _ps.Ticket.ToString(), handler, postLoad, idle ?? Idle, connectRetrying, TestContext.Current.CancellationToken);
        return (task, got);
    }

    private static async Task<T> Fails<T>(Task task) where T : Exception =>
        await Assert.ThrowsAsync<T>(() => task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken));

    /// <summary>After a failed step the worker answers every later message with that failure, and nothing else (no second reply).</summary>
    private static async Task AssertOnlyFailureFollows(FakeParameterServer ps, WorkerReply failed) =>
        Assert.Equal(new WorkerReply(false, $"release after a failure: {failed.Error}"), await ps.SendAsync(new ReleaseMessage()));

    [Fact]
    public async Task Receive_FullUpdate_HandsEveryTensorWithItsBytesAndSummarizes()
    {
        var hookRanAfter = -1;
        var (task, got) = Receive(postLoad: _ => { hookRanAfter = 0; return ValueTask.CompletedTask; });
        var bucket0 = _ps.Place(Tensors[..3]);
        var bucket1 = _ps.Place(Tensors[3..]);
        await _ps.UpdateAsync(bucket0, bucket1);
        var summary = await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);

        Assert.Equal(0, hookRanAfter);
        Assert.Equal(new ReceiveSummary(_ps.DeviceId, 2, Tensors.Length, Tensors.Sum(t => t.Bytes.LongLength), summary.Elapsed), summary);
        foreach (var (t, wire, bucket) in Tensors.Zip(bucket0.Concat(bucket1), Enumerable.Repeat(0, 3).Concat(Enumerable.Repeat(1, 3))))
        {
            var (b, info, bytes) = got[t.Name];
            Assert.Equal(bucket, b);
            Assert.Equal(t.DType, info.DType);
            Assert.Equal(t.Shape, info.Shape);
            Assert.Equal(wire.Offset, info.DataOffset);
            Assert.Equal(t.Bytes, bytes);
        }
    }

    [Fact]
    public async Task Receive_Release_KeepsTheMappingForTheNextUpdate()
    {
        var before = _ps.Mappings();
        for (var update = 0; update < 2; update++)
        {
            var (task, _) = Receive();
            await _ps.AcceptAsync();
            FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
            Assert.Equal(before + 1, _ps.Mappings()); // The second update maps nothing new.
            FakeParameterServer.AssertOk(await _ps.SendAsync(new LoadMessage(0, _ps.Place(Tensors))));
            FakeParameterServer.AssertOk(await _ps.SendAsync(new ReleaseMessage()));
            FakeParameterServer.AssertOk(await _ps.SendAsync(new FinishMessage()));
            await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
            Assert.Equal(before + 1, _ps.Mappings());
            _ps.CloseConnection();
        }
        WeightReceiver.ReleaseMappings();
        Assert.Equal(before, _ps.Mappings());
    }

    [Fact]
    public async Task Receive_MatchingChecksums_Loads()
    {
        var (task, got) = Receive();
        await _ps.UpdateAsync(_ps.Place(Tensors, withSha256: true));
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(Tensors.Length, got.Count);
    }

    [Fact]
    public async Task Receive_Crc32_MatchingLoads_ACorruptedByteFailsNamingTensorAndDevice()
    {
        var (task, got) = Receive();
        var wire = _ps.Place(Tensors, withCrc32: true);
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        FakeParameterServer.AssertOk(await _ps.SendAsync(new LoadMessage(0, wire)));
        Assert.Equal(Tensors.Length, got.Count);

        _ps.Corrupt(wire[2].Offset + wire[2].NBytes - 1, 0x40); // One bit of the last byte of the third tensor.
        var reply = await _ps.SendAsync(new LoadMessage(1, wire));
        Assert.False(reply.Ok);
        var actual = TensorChecksum.Hex(ReferenceCrc32.Of(_ps.Read(wire[2].Offset, wire[2].NBytes)));
        Assert.Equal($"load of bucket 1: tensor '{Tensors[2].Name}' on device '{_ps.DeviceId}' has crc32 {actual}, expected {wire[2].Crc32} (corrupted on the way)", reply.Error);
        Assert.Equal(Tensors.Length, got.Count); // The corrupted bucket reached no handler.
        _ps.CloseConnection();
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }

    [Fact]
    public async Task Receive_ChecksumMismatch_RepliesWhichTensorAndFails()
    {
        var (task, got) = Receive();
        var wire = _ps.Place(Tensors, withSha256: true);
        wire[1] = wire[1] with { Sha256 = new string('0', 64) };
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(0, wire));
        Assert.False(reply.Ok);
        Assert.Contains($"tensor '{Tensors[1].Name}' has sha256 {Tensors[1].Sha256}, expected {new string('0', 64)}", reply.Error, StringComparison.Ordinal);
        Assert.Empty(got);

        FakeParameterServer.AssertOk(await _ps.SendAsync(new AbortMessage("rank 0 failed")));
        var e = await Fails<WeightReceiveException>(task);
        Assert.Equal(reply.Error, e.Message);
    }

    [Fact]
    public async Task Receive_HandlerThrows_ReplyCarriesItsMessageAndReceiveFails()
    {
        var boom = new InvalidOperationException("no room for layer 3 on this device");
        var (task, _) = Receive(handler: (bucket, _) =>
        {
            if (bucket == 1)
            {
                throw boom;
            }
        });
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        FakeParameterServer.AssertOk(await _ps.SendAsync(new LoadMessage(0, _ps.Place(Tensors[..2]))));
        var reply = await _ps.SendAsync(new LoadMessage(1, _ps.Place(Tensors[2..])));
        Assert.Equal(new WorkerReply(false, boom.Message), reply);

        // Whatever comes next cannot succeed; the failure is repeated, not forgotten.
        var next = await _ps.SendAsync(new ReleaseMessage());
        Assert.False(next.Ok);
        Assert.Contains(boom.Message, next.Error, StringComparison.Ordinal);

        _ps.CloseConnection();
        var e = await Fails<WeightReceiveException>(task);
        Assert.Equal(boom.Message, e.Message);
        Assert.Same(boom, e.InnerException);
    }

    [Fact]
    public async Task Receive_PostLoadHookThrows_RepliesAndFails()
    {
        var (task, _) = Receive(postLoad: _ => throw new InvalidOperationException("re-quantize failed"));
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        FakeParameterServer.AssertOk(await _ps.SendAsync(new ReleaseMessage()));
        var reply = await _ps.SendAsync(new FinishMessage());
        Assert.Equal(new WorkerReply(false, "post-load hook: re-quantize failed"), reply);
        FakeParameterServer.AssertOk(await _ps.SendAsync(new AbortMessage("worker failed")));
        var e = await Fails<WeightReceiveException>(task);
        Assert.Equal(reply.Error, e.Message);
    }

    public static TheoryData<WireTensor, string> BadTensors() => new()
    {
        { new WireTensor("w", "F32", [4], 65536 - 8, 16), "'w' (#0): bytes [65528, 65544) are outside segment" },
        { new WireTensor("w", "F32", [4], 65536 - 15, 16), "'w' (#0): bytes [65521, 65537) are outside segment" },
        { new WireTensor("w", "F32", [4], -1, 16), "bytes [-1, 15) are outside segment" },
        { new WireTensor("w", "F32", [4], -16, 16), "bytes [-16, 0) are outside segment" },
        { new WireTensor("w", "F32", [4], long.MaxValue - 4, 16), "are outside segment" },
        { new WireTensor("w", "F33", [4], 0, 16), "'w' (#0) has unknown dtype 'F33'" },
        { new WireTensor("w", "F32", [4, 4], 0, 60), "nbytes is 60, dtype F32 and shape [4, 4] need 64" },
        { new WireTensor("w", "F32", [-1, 4], 0, 16), "negative dimension" },
        { new WireTensor("w", "F4", [3], 0, 2), "do not fill whole bytes" },
        { new WireTensor("", "F32", [4], 0, 16), "tensor #0 has an empty name" },
        { new WireTensor("w", "F32", [4], 0, 16, "xyz"), "sha256 'xyz' is not 64 hex digits" },
        { new WireTensor("w", "F32", [4], 0, 16, new string('a', 63)), $"sha256 '{new string('a', 63)}' is not 64 hex digits" },
        { new WireTensor("w", "F32", [4], 0, 16, new string('a', 63) + "g"), "is not 64 hex digits" },
        { new WireTensor("w", "F32", [4], 0, 16, Crc32: "1234567"), "'w' (#0): crc32 '1234567' is not 8 hex digits" },
        { new WireTensor("w", "F32", [4], 0, 16, Crc32: "0x123456"), "crc32 '0x123456' is not 8 hex digits" },
    };

    [Theory]
    [MemberData(nameof(BadTensors))]
    public async Task Receive_BadTensor_RepliesWhatIsWrongAndCallsNoHandler(WireTensor bad, string expected)
    {
        var called = false;
        var (task, _) = Receive(handler: (_, _) => called = true);
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(4, [bad]));
        Assert.False(reply.Ok);
        Assert.StartsWith("load of bucket 4: ", reply.Error, StringComparison.Ordinal);
        Assert.Contains(expected, reply.Error, StringComparison.Ordinal);
        Assert.False(called);
        _ps.CloseConnection();
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }

    [Fact]
    public async Task Receive_FurtherSegments_TensorsNameThemByIndex_AnIndexPastTheLastIsRefused()
    {
        using var registered = SharedMemorySegment.Create("ckpt-test-reg-" + Guid.NewGuid().ToString("N")[..16], 4096);
        var t = TestTensor.Random("w", DType.F32, [4]);
        unsafe
        {
            t.Bytes.CopyTo(new Span<byte>(registered.Pointer + 4096 - 16, 16));
        }
        var (task, got) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach with { Segments = [new SegmentRef(registered.Name, registered.Size)] }));
        var main = _ps.Place([Tensors[1]]);
        FakeParameterServer.AssertOk(await _ps.SendAsync(new LoadMessage(0, [new WireTensor("w", "F32", [4], 4096 - 16, 16, Segment: 1), main[0] with { Segment = 0 }])));
        Assert.Equal(t.Bytes, got["w"].Bytes); // Segment 1 is the first further one; 0 is the device buffer.
        Assert.Equal(Tensors[1].Bytes, got[Tensors[1].Name].Bytes);
        var reply = await _ps.SendAsync(new LoadMessage(1, [new WireTensor("w", "F32", [4], 0, 16, Segment: 2)]));
        Assert.Equal(new WorkerReply(false, "load of bucket 1: tensor 'w' (#0): segment 2 was not attached (this update attached 2)"), reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_NegativeSegmentIndex_IsRefused()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(0, [new WireTensor("w", "F32", [4], 0, 16, Segment: -1)]));
        Assert.Equal(new WorkerReply(false, "load of bucket 0: tensor 'w' (#0): segment -1 was not attached (this update attached 1)"), reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    public static TheoryData<string, long, string> BadFurtherSegments() => new()
    {
        { "shm", 0, "attach: every further segment needs a name and a positive size, got ['seg' of 0]" },
        { "shm", -8, "attach: every further segment needs a name and a positive size, got ['seg' of -8]" },
        { "cuda-ipc", 64, "attach: further segments come only with a 'shm' buffer, not 'cuda-ipc'" },
    };

    [Theory]
    [MemberData(nameof(BadFurtherSegments))]
    public async Task Receive_BadFurtherSegment_IsRefusedBeforeMapping(string kind, long size, string expected)
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        var reply = await _ps.SendAsync(_ps.Attach with { Kind = kind, Segments = [new SegmentRef("ok", 64), new SegmentRef("seg", size)] });
        Assert.False(reply.Ok);
        Assert.Equal(kind == "shm" ? expected.Replace("got [", "got ['ok' of 64, ", StringComparison.Ordinal) : expected, reply.Error);
        await AssertOnlyFailureFollows(_ps, reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    public static TheoryData<TensorPart, long[], string> BadParts() => new()
    {
        { new TensorPart(0, [[0, 2]], [4, 4, 1]), [2, 4], "part of full shape [4, 4, 1] does not match shape [2, 4]" },
        { new TensorPart(0, [[0, 2, 1]], [4, 4]), [2, 4], "part of full shape [4, 4] does not match shape [2, 4]" },
        { new TensorPart(0, [[0, 2]], [4, 4]), [3, 4], "part shape [2, 4] (slices of [4, 4] along dimension 0) is not shape [3, 4]" },
        { new TensorPart(0, [[3, 2]], [4, 4]), [2, 4], "part: slice [3, 5) of dimension 0 is outside [0, 4)" },
    };

    [Theory]
    [MemberData(nameof(BadParts))]
    public async Task Receive_PartThatDoesNotDescribeTheTensor_IsRefused(TensorPart part, long[] shape, string expected)
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var bytes = shape.Aggregate(4L, (a, b) => a * b);
        var reply = await _ps.SendAsync(new LoadMessage(0, [new WireTensor("w", "F32", shape, 0, bytes, Part: part)]));
        Assert.Equal(new WorkerReply(false, $"load of bucket 0: tensor 'w' (#0): {expected}"), reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_PartThatFits_IsHandedWithIt()
    {
        var (task, got) = Receive();
        var half = TestTensor.Random("w", DType.F32, [2, 4]);
        var wire = _ps.Place([half])[0] with { Part = new TensorPart(0, [[2, 2]], [4, 4]) };
        await _ps.UpdateAsync([wire]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(half.Bytes, got["w"].Bytes);
    }

    [Fact]
    public async Task Receive_TensorEndingExactlyAtTheSegmentEnd_Loads()
    {
        var last = TestTensor.Random("w", DType.F32, [4]);
        var (task, got) = Receive();
        var offset = _ps.Segment.Size - last.Bytes.Length;
        await _ps.UpdateAsync([_ps.PlaceAt(last, offset, withSha256: true)]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(offset, got["w"].Info.DataOffset);
        Assert.Equal(last.Bytes, got["w"].Bytes);
    }

    [Fact]
    public async Task Receive_UppercaseChecksum_Loads()
    {
        var (task, got) = Receive();
        var wire = _ps.Place(Tensors[..2], withSha256: true);
        await _ps.UpdateAsync([wire[0] with { Sha256 = wire[0].Sha256!.ToUpperInvariant() }, wire[1]]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(2, got.Count);
    }

    [Fact]
    public async Task Receive_NegativeBucketIndex_Rejected()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(-1, _ps.Place(Tensors[..1])));
        Assert.Equal(new WorkerReply(false, "load of bucket -1: bucket index must not be negative"), reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Theory]
    [InlineData(0L)]
    [InlineData(-1L)]
    public async Task Receive_AttachOfNoBytes_Rejected(long size)
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        var reply = await _ps.SendAsync(_ps.Attach with { Size = size });
        Assert.Equal(new WorkerReply(false, $"attach: segment '{_ps.Segment.Name}' has size {size}; it must be positive"), reply);
        await AssertOnlyFailureFollows(_ps, reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_ChecksumMismatchBesideATensorWithout_StillFails()
    {
        var (task, got) = Receive();
        var wire = _ps.Place(Tensors[..2], withSha256: true);
        wire[0] = wire[0] with { Sha256 = null };
        wire[1] = wire[1] with { Sha256 = new string('0', 64) };
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(0, wire));
        Assert.Equal(new WorkerReply(false, $"load of bucket 0: tensor '{Tensors[1].Name}' has sha256 {Tensors[1].Sha256}, expected {new string('0', 64)}"), reply);
        Assert.Empty(got);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_NullTensorInLoad_Rejected()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var json = Encoding.UTF8.GetBytes("""{"type":"load","bucket":0,"tensors":[null]}""");
        await _ps.SendRawAsync([.. BitConverter.GetBytes(json.Length), .. json]); // Little-endian length, as on the wire.
        Assert.Equal(new WorkerReply(false, "load of bucket 0: tensor #0 is null"), await _ps.ReplyAsync());
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_FailedLoad_UnmapsAtOnce()
    {
        var before = _ps.Mappings();
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        Assert.Equal(before + 1, _ps.Mappings());
        var reply = await _ps.SendAsync(new LoadMessage(0, [new WireTensor("w", "F33", [1], 0, 4)]));
        Assert.False(reply.Ok);
        Assert.Equal(before, _ps.Mappings()); // The buffer may be gone for good: the worker lets go before it answers.
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_SilenceAfterAFailure_ThrowsTheFailure()
    {
        var (task, _) = Receive(idle: TimeSpan.FromMilliseconds(200));
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(0, [new WireTensor("w", "F33", [1], 0, 4)]));
        // No abort and no close: at the deadline the failure is what the worker reports, not the silence.
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }

    [Fact]
    public async Task Receive_BadFrameAfterAFailure_ThrowsTheFailure()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(0, [new WireTensor("w", "F33", [1], 0, 4)]));
        await _ps.SendRawAsync([1, 0, 0, 0, (byte)'{']);
        Assert.Equal(new WorkerReply(false, reply.Error), await _ps.ReplyAsync());
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }

    [Fact]
    public async Task Receive_DuplicateNameInBucket_Rejected()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var wire = _ps.Place(Tensors[1..2]);
        var reply = await _ps.SendAsync(new LoadMessage(0, [wire[0], wire[0]]));
        Assert.Contains($"tensor '{Tensors[1].Name}' (#1) appears twice in the bucket", reply.Error, StringComparison.Ordinal);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    public static TheoryData<string[], string> OutOfOrder() => new()
    {
        { ["load"], "'load' out of order before attach: expected attach (or abort)" },
        { ["release"], "'release' out of order before attach: expected attach (or abort)" },
        { ["finish"], "'finish' out of order before attach: expected attach (or abort)" },
        { ["attach", "attach"], "'attach' out of order after attach, before any bucket: expected load or release (or abort)" },
        { ["attach", "load", "finish"], "'finish' out of order after bucket 0 (1 loaded): expected load or release (or abort)" },
        { ["attach", "release", "load"], "'load' out of order after release, before finish: expected finish (or abort)" },
        { ["attach", "release", "release"], "'release' out of order after release, before finish: expected finish (or abort)" },
    };

    [Theory]
    [MemberData(nameof(OutOfOrder))]
    public async Task Receive_OutOfOrder_RepliesWhatWasExpected(string[] sequence, string expected)
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        WorkerReply? last = null;
        foreach (var step in sequence)
        {
            last = await _ps.SendAsync(step switch
            {
                "attach" => _ps.Attach,
                "load" => new LoadMessage(0, _ps.Place(Tensors[..1])),
                "release" => new ReleaseMessage(),
                _ => new FinishMessage(),
            });
        }
        Assert.Equal(new WorkerReply(false, expected), last);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_UnsupportedKind_Rejected()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        var reply = await _ps.SendAsync(_ps.Attach with { Kind = "rdma" });
        Assert.Equal("attach: segment kind 'rdma' is not supported by this worker (it maps 'shm' and 'cuda-ipc')", reply.Error);
        await AssertOnlyFailureFollows(_ps, reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_CudaIpcWithBadHandle_RejectedNamingTheHandle()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        var reply = await _ps.SendAsync(_ps.Attach with { Kind = "cuda-ipc", Handle = "not-a-handle" });
        Assert.StartsWith($"attach: cannot map the CUDA IPC buffer of device {_ps.DeviceId} of {_ps.Segment.Size} bytes: 'not-a-handle' is not a base64 CUDA IPC handle of 64 bytes",
            reply.Error, StringComparison.Ordinal);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_CudaIpcWithoutThatDevice_RejectedWithTheReason()
    {
        // A well-formed handle for a device this process does not have: no driver here, or no GPU with that id.
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        var reply = await _ps.SendAsync(_ps.Attach with { Kind = "cuda-ipc", Handle = Convert.ToBase64String(new byte[64]) });
        Assert.StartsWith($"attach: cannot map the CUDA IPC buffer of device {_ps.DeviceId}", reply.Error, StringComparison.Ordinal);
        Assert.True(reply.Error!.Contains("libcuda.so.1", StringComparison.Ordinal) || reply.Error.Contains($"no CUDA device {_ps.DeviceId}", StringComparison.Ordinal), reply.Error);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_MissingOrShortSegment_Rejected()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        var reply = await _ps.SendAsync(_ps.Attach with { Size = _ps.Segment.Size * 2 });
        Assert.StartsWith($"attach: cannot map shared memory segment '{_ps.Segment.Name}' of {_ps.Segment.Size * 2} bytes", reply.Error, StringComparison.Ordinal);
        await AssertOnlyFailureFollows(_ps, reply);
        _ps.CloseConnection();
        await Fails<WeightReceiveException>(task);

        using var other = FakeParameterServer.Start();
        (task, _) = Receive(address: other.Ticket.ToString());
        await other.AcceptAsync();
        reply = await other.SendAsync(other.Attach with { Handle = "ckpt-test-no-such-segment" });
        Assert.StartsWith("attach: cannot map shared memory segment 'ckpt-test-no-such-segment'", reply.Error, StringComparison.Ordinal);
        other.CloseConnection();
        await Fails<WeightReceiveException>(task);
    }

    [Fact]
    public async Task Receive_Abort_RepliesOkUnmapsAndThrowsTheReason()
    {
        var before = _ps.Mappings();
        var (task, got) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        FakeParameterServer.AssertOk(await _ps.SendAsync(new LoadMessage(0, _ps.Place(Tensors[..2]))));
        FakeParameterServer.AssertOk(await _ps.SendAsync(new AbortMessage("rank 5: worker failed at bucket 0")));
        var e = await Fails<WeightUpdateAbortedException>(task);
        Assert.Equal("rank 5: worker failed at bucket 0", e.Reason);
        Assert.Contains(e.Reason, e.Message, StringComparison.Ordinal);
        Assert.Equal(before, _ps.Mappings());
        Assert.Equal(2, got.Count);
    }

    [Fact]
    public async Task Receive_AbortBeforeAttach_Throws()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(new AbortMessage("cancelled")));
        Assert.Equal("cancelled", (await Fails<WeightUpdateAbortedException>(task)).Reason);
    }

    [Fact]
    public async Task Receive_ServerClosesMidUpdate_FailsFastAndUnmaps()
    {
        var before = _ps.Mappings();
        // Failing within the step deadline, not after 10 minutes of silence, is failing fast.
        var (task, _) = Receive(idle: TimeSpan.FromMinutes(10));
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        FakeParameterServer.AssertOk(await _ps.SendAsync(new LoadMessage(0, _ps.Place(Tensors[..2]))));
        _ps.CloseConnection();
        var e = await Fails<WeightReceiveException>(task);
        Assert.Equal($"the parameter server at {_ps.Address} closed the connection after bucket 0 (1 loaded)", e.Message);
        Assert.Equal(before, _ps.Mappings());
    }

    [Fact]
    public async Task Receive_ServerGoesSilent_FailsAtTheIdleDeadline()
    {
        var (task, _) = Receive(idle: TimeSpan.FromMilliseconds(300));
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var e = await Fails<WeightReceiveException>(task);
        Assert.Equal($"no message from the parameter server at {_ps.Address} within 0.3 s after attach, before any bucket (expected load or release)", e.Message);
    }

    [Fact]
    public async Task Receive_NothingListens_FailsAtTheDeadline()
    {
        using var nobody = FakeParameterServer.Start(listen: false);
        var clock = Stopwatch.StartNew();
        var (task, _) = Receive(idle: TimeSpan.FromMilliseconds(300), address: nobody.Ticket.ToString());
        var e = await Fails<WeightReceiveException>(task);
        Assert.StartsWith($"no parameter server listening at {nobody.Address} within 0.3 s", e.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed >= TimeSpan.FromMilliseconds(250), $"gave up after {clock.Elapsed}");
    }

    [Fact]
    public async Task Receive_ServerListensLate_ConnectionIsRetried()
    {
        using var late = FakeParameterServer.Start(listen: false);
        var refused = new TaskCompletionSource<SocketException>(TaskCreationOptions.RunContinuationsAsynchronously);
        var (task, got) = Receive(address: late.Ticket.ToString(), connectRetrying: e => refused.TrySetResult(e));
        await refused.Task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.False(task.IsCompleted);
        late.Listen();
        await late.UpdateAsync(late.Place(Tensors[..1]));
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Single(got);
    }

    [Fact]
    public async Task Receive_UndecodableMessage_RepliesErrorAndFails()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        await _ps.SendRawAsync(WorkerFraming.Encode(new Dictionary<string, object> { ["type"] = "reload" }));
        var reply = await _ps.ReplyAsync();
        Assert.NotNull(reply);
        Assert.StartsWith("bad message before attach: frame of 17 bytes is not a valid WorkerMessage: Read unrecognized type discriminator id 'reload'", reply.Error, StringComparison.Ordinal);
        FakeParameterServer.AssertOk(await _ps.SendAsync(new AbortMessage("giving up")));
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }

    [Fact]
    public async Task Receive_BadFrameLength_SaysSoAndDropsTheConnection()
    {
        var (task, _) = Receive();
        await _ps.AcceptAsync();
        await _ps.SendRawAsync([0xff, 0xff, 0xff, 0x7f]);
        var reply = await _ps.ReplyAsync();
        Assert.NotNull(reply);
        Assert.Contains("bad frame from the parameter server", reply.Error, StringComparison.Ordinal);
        Assert.Null(await _ps.ReplyAsync());
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }

    [Fact]
    public async Task Receive_Cancelled_ThrowsOperationCanceledAndUnmaps()
    {
        var before = _ps.Mappings();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, _) => { }, null, Idle, cts.Token);
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken));
        Assert.Equal(before, _ps.Mappings());
    }

    private static readonly TestTensor[] Large =
        [.. Enumerable.Range(0, 8).Select(i => TestTensor.Random($"layer.{i}.weight", DType.BF16, [1024, 2048], seed: i))];

    [Fact]
    public async Task Receive_LargeBucketWithChecksums_Verified()
    {
        using var big = FakeParameterServer.Start(size: 64 << 20);
        var digests = new Dictionary<string, string>();
        var task = WeightReceiver.ReceiveAsync(big.Ticket.ToString(), (_, views) =>
        {
            foreach (var v in views)
            {
                digests.Add(v.Name, Convert.ToHexStringLower(SHA256.HashData(v.Span))); // Hashed here, independently of the receiver's check.
            }
        }, null, Idle, TestContext.Current.CancellationToken);
        await big.UpdateAsync(big.Place(Large[..4], withSha256: true), big.Place(Large[4..], withSha256: true));
        var summary = await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(32L << 20, summary.Bytes);
        Assert.Equal(Large.ToDictionary(t => t.Name, t => Convert.ToHexStringLower(SHA256.HashData(t.Bytes))), digests);
    }

    [Fact]
    public async Task Receive_LargeBucketOneChecksumWrong_FailsNamingTheTensorAndBothDigests()
    {
        using var big = FakeParameterServer.Start(size: 64 << 20);
        var task = WeightReceiver.ReceiveAsync(big.Ticket.ToString(), (_, _) => { }, null, Idle, TestContext.Current.CancellationToken);
        var bucket1 = big.Place(Large[4..], withSha256: true);
        var wrong = Large[0].Sha256; // A real digest, of another tensor.
        bucket1[2] = bucket1[2] with { Sha256 = wrong };
        await big.AcceptAsync();
        FakeParameterServer.AssertOk(await big.SendAsync(big.Attach));
        FakeParameterServer.AssertOk(await big.SendAsync(new LoadMessage(0, big.Place(Large[..4], withSha256: true))));
        var reply = await big.SendAsync(new LoadMessage(1, bucket1));
        Assert.False(reply.Ok);
        Assert.Contains($"load of bucket 1: tensor '{Large[6].Name}' has sha256 {Large[6].Sha256}, expected {wrong}", reply.Error, StringComparison.Ordinal);

        FakeParameterServer.AssertOk(await big.SendAsync(new AbortMessage("rank 0 failed")));
        Assert.Equal(reply.Error, (await Fails<WeightReceiveException>(task)).Message);
    }
}
