using CheckpointEngine.Tests.Support;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

/// <summary>
/// A part in place (<c>pitch</c>): a receiver that takes strided parts gets a column slice as rows inside its whole tensor; every
/// byte the rows touch must lie in the segment (edges: the last byte inside loads, one past is refused), rows × pitch must not
/// overflow, the pitch must hold a row, and a receiver that did not ask for strided parts refuses them.
/// </summary>
public sealed class StridedPartReceiverTests : IDisposable
{
    private const long Size = 1 << 16;

    private readonly FakeParameterServer _ps = FakeParameterServer.Start(Size);

    public void Dispose() => _ps.Dispose();

    /// <summary>A [4, 8] F32 tensor (rows of 32 bytes); the part is columns [3, 5) of it: 4 rows of 8 bytes, 32 apart.</summary>
    private static readonly TestTensor Whole = TestTensor.Random("o.weight", DType.F32, [4, 8]);

    private static readonly TensorPart Columns = new(1, [[3, 2]], [4, 8]);

    /// <summary>The part, with its rows starting at byte <paramref name="offset"/> of the segment.</summary>
    private static WireTensor Part(long offset, long pitch = 32) => new("o.weight", "F32", [4, 2], offset, 32, Part: Columns, Pitch: pitch);

    /// <summary>The bytes of columns [3, 5) of <see cref="Whole"/>, packed.</summary>
    private static byte[] Expected() => [.. Enumerable.Range(0, 4).SelectMany(r => Whole.Bytes.Skip((r * 32) + 12).Take(8))];

    /// <summary>Writes the part's rows at <paramref name="offset"/>, 32 bytes apart (the whole tensor need not fit around them).</summary>
    private unsafe void WriteRows(long offset)
    {
        var part = Expected();
        for (var r = 0; r < 4; r++)
        {
            part.AsSpan(r * 8, 8).CopyTo(new Span<byte>(_ps.Segment.Pointer + offset + (r * 32), 8));
        }
    }

    private (Task<ReceiveSummary> Task, Dictionary<string, (long Rows, long RowBytes, long Pitch, bool Packed, byte[] Bytes, byte[] ByRow)> Got) Receive(bool strided = true)
    {
        var got = new Dictionary<string, (long, long, long, bool, byte[], byte[])>(StringComparer.Ordinal);
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, tensors) =>
        {
            foreach (var t in tensors)
            {
                var bytes = new byte[t.Length];
                t.CopyTo(bytes);
                var byRow = Enumerable.Range(0, (int)t.Rows).SelectMany(i => t.Row(i).ToArray()).ToArray();
                got[t.Name] = (t.Rows, t.RowBytes, t.Pitch, t.IsPacked, bytes, byRow);
            }
        }, null, FakeParameterServer.StepDeadline, null, TestContext.Current.CancellationToken, stridedParts: strided);
        return (task, got);
    }

    private async Task<WorkerReply> LoadOne(WireTensor tensor, bool strided = true)
    {
        var (task, _) = Receive(strided);
        await _ps.AcceptAsync();
        FakeParameterServer.AssertOk(await _ps.SendAsync(_ps.Attach));
        var reply = await _ps.SendAsync(new LoadMessage(0, [tensor]));
        _ps.CloseConnection();
        await Assert.ThrowsAsync<WeightReceiveException>(() => task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken));
        return reply;
    }

    [Fact]
    public async Task Receive_ColumnSliceInPlace_HandsRowsAndPitch_CopiesThePartPacked()
    {
        var (task, got) = Receive();
        var at = _ps.Place([Whole])[0].Offset;
        await _ps.UpdateAsync([Part(at + 12)]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);

        var (rows, rowBytes, pitch, packed, bytes, byRow) = got["o.weight"];
        Assert.Equal((4L, 8L, 32L, false), (rows, rowBytes, pitch, packed));
        Assert.Equal(Expected(), bytes);
        Assert.Equal(Expected(), byRow);
    }

    [Fact]
    public async Task Receive_PartInPlace_ChecksumsCoverItsRowsInOrder()
    {
        (uint Crc, string Sha)? sums = null;
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, tensors) => sums = (TensorChecksum.Crc32(tensors[0]), TensorHash.Sha256Hex(tensors[0])),
            null, FakeParameterServer.StepDeadline, null, TestContext.Current.CancellationToken, stridedParts: true);
        await _ps.UpdateAsync([Part(_ps.Place([Whole])[0].Offset + 12)]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal((ReferenceCrc32.Of(Expected()), TensorHash.Sha256Hex(Expected())), sums);
    }

    [Fact]
    public async Task Receive_PartInPlace_SpanIsRefusedNamingRowsAndPitch()
    {
        string? error = null;
        var task = WeightReceiver.ReceiveAsync(_ps.Ticket.ToString(), (_, tensors) => error = Assert.Throws<InvalidOperationException>(() => tensors[0].Span.Length).Message,
            null, FakeParameterServer.StepDeadline, null, TestContext.Current.CancellationToken, stridedParts: true);
        await _ps.UpdateAsync([Part(_ps.Place([Whole])[0].Offset + 12)]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal("tensor 'o.weight' lies in place in 4 rows 32 bytes apart: copy it with CopyTo or read it by Row", error);
    }

    [Fact]
    public async Task Receive_LastRowEndingAtTheSegmentEnd_Loads()
    {
        // Rows at offset, offset + 32, + 64, + 96; the last one's 8 bytes end exactly at the segment's end.
        var offset = Size - (3 * 32) - 8;
        WriteRows(offset);
        var (task, got) = Receive();
        await _ps.UpdateAsync([Part(offset)]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal(Expected(), got["o.weight"].Bytes);
    }

    [Fact]
    public async Task Receive_AColumnSliceOfNoRows_LoadsEmpty_EvenAtTheSegmentEnd()
    {
        // A [0, 8] tensor's columns [3, 5): no rows, no bytes; it touches nothing, so even the segment's end is a valid place.
        var (task, got) = Receive();
        await _ps.UpdateAsync([new WireTensor("o.weight", "F32", [0, 2], Size, 0, Part: new TensorPart(1, [[3, 2]], [0, 8]), Pitch: 32)]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        var (rows, rowBytes, _, _, bytes, byRow) = got["o.weight"];
        Assert.Equal((0L, 0L), (rows, rowBytes));
        Assert.Empty(bytes);
        Assert.Empty(byRow);
    }

    [Fact]
    public async Task Receive_LastRowOneBytePastTheSegmentEnd_IsRefused()
    {
        var offset = Size - (3 * 32) - 8 + 1;
        var reply = await LoadOne(Part(offset));
        Assert.Equal(new WorkerReply(false,
            $"load of bucket 0: tensor 'o.weight' (#0): bytes [{offset}, {Size + 1}) (4 rows of 8 bytes, 32 bytes apart) are outside segment '{_ps.Segment.Name}' of {Size} bytes"), reply);
    }

    [Fact]
    public async Task Receive_RowsTimesPitchOverflowing_IsRefused()
    {
        var reply = await LoadOne(Part(0, pitch: long.MaxValue / 2));
        Assert.Equal(new WorkerReply(false, $"load of bucket 0: tensor 'o.weight' (#0): 4 rows {long.MaxValue / 2} bytes apart overflow a 64-bit offset"), reply);
    }

    [Fact]
    public async Task Receive_PitchLargeButInside_OverflowOfTheLastRowOnlyIsRefusedAsOutside()
    {
        // 3 pitches fit a 64-bit offset, but the rows run past the segment: outside, not an overflow.
        var pitch = (long.MaxValue - 8) / 3;
        var reply = await LoadOne(Part(0, pitch));
        Assert.StartsWith("load of bucket 0: tensor 'o.weight' (#0): bytes [0, ", reply.Error, StringComparison.Ordinal);
        Assert.EndsWith($"are outside segment '{_ps.Segment.Name}' of {Size} bytes", reply.Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(7, "pitch 7 is smaller than a row of the part (8 bytes)")]
    [InlineData(0, "pitch 0 must be positive")]
    [InlineData(-32, "pitch -32 must be positive")]
    public async Task Receive_PitchThatCannotHoldARow_IsRefused(long pitch, string expected)
    {
        var reply = await LoadOne(Part(0, pitch));
        Assert.Equal(new WorkerReply(false, $"load of bucket 0: tensor 'o.weight' (#0): {expected}"), reply);
    }

    [Fact]
    public async Task Receive_PitchEqualToARow_LoadsAsPacked()
    {
        var (task, got) = Receive();
        var rows = _ps.Place([TestTensor.Random("o.weight", DType.F32, [4, 2])])[0];
        await _ps.UpdateAsync([rows with { Part = Columns, Pitch = 8 }]);
        await task.WaitAsync(FakeParameterServer.StepDeadline, TestContext.Current.CancellationToken);
        Assert.Equal((4L, 8L, 8L, true), (got["o.weight"].Rows, got["o.weight"].RowBytes, got["o.weight"].Pitch, got["o.weight"].Packed));
        Assert.Equal(_ps.Read(rows.Offset, 32), got["o.weight"].Bytes);
    }

    public static TheoryData<WireTensor, string> BadPitches() => new()
    {
        { Part(0) with { Part = null, Shape = [4, 2] }, "pitch 32 comes without a part" },
        { new WireTensor("o.weight", "F32", [4, 4], 0, 64, Part: new TensorPart(1, [[0, 2], [5, 2]], [4, 8]), Pitch: 32), "pitch 32 comes with a part of 2 slices (it describes one)" },
        { Part(0) with { Crc32 = "00000000" }, "a part in place carries no checksum (checksums cover whole tensors)" },
        { Part(0) with { Sha256 = new string('0', 64) }, "a part in place carries no checksum (checksums cover whole tensors)" },
        { new WireTensor("o.weight", "F32", [4, 1], 0, 16, Part: new TensorPart(1, [[3, 2]], [4, 8]), Pitch: 32), "part shape [4, 2] (slices of [4, 8] along dimension 1) is not shape [4, 1]" },
    };

    [Theory]
    [MemberData(nameof(BadPitches))]
    public async Task Receive_PitchThatDoesNotDescribeRows_IsRefused(WireTensor tensor, string expected)
    {
        var reply = await LoadOne(tensor);
        Assert.Equal(new WorkerReply(false, $"load of bucket 0: tensor 'o.weight' (#0): {expected}"), reply);
    }

    [Fact]
    public async Task Receive_PitchToAWorkerThatTakesPackedPartsOnly_IsRefused()
    {
        var reply = await LoadOne(Part(0), strided: false);
        Assert.Equal(new WorkerReply(false,
            "load of bucket 0: tensor 'o.weight' (#0): pitch 32 sent to a worker that takes packed parts only (its hello did not say \"strided\")"), reply);
    }
}
