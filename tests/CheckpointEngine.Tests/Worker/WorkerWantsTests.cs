using System.Text;
using CheckpointEngine.Memory;
using CheckpointEngine.Server;
using CheckpointEngine.Tests.Server;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Worker;

/// <summary>
/// What a worker declares it keeps: the wire form, the checks against a checkpoint's tensors, and the
/// declaration travelling to the parameter server, which fails the attach on every rank when it does not fit.
/// </summary>
public sealed class WorkerWantsTests
{
    private static readonly IReadOnlyList<long> Matrix = [8, 16];

    private static WorkerWants TpRank1Of2() => new(new Dictionary<string, TensorWant>
    {
        ["layers.0.q_proj.weight"] = TensorWant.Along(0, new SliceRange(4, 4)),
        ["layers.0.o_proj.weight"] = TensorWant.Along(1, new SliceRange(8, 8)),
        ["lm_head.weight"] = TensorWant.None,
    });

    [Fact]
    public void WireForm_IsCanonical_RoundTrips_AndEqualDeclarationsShareADigest()
    {
        var wants = TpRank1Of2();
        Assert.Equal("""{"others":"whole","tensors":{"layers.0.o_proj.weight":{"dim":1,"slices":[[8,8]]},"layers.0.q_proj.weight":{"dim":0,"slices":[[4,4]]},"lm_head.weight":"none"}}""",
            Encoding.UTF8.GetString(wants.ToJson()));
        var back = WorkerWants.Parse(wants.ToJson());
        Assert.Equal(wants.Digest(), back.Digest());
        Assert.Equal(TensorWant.Along(0, new SliceRange(4, 4)), back.For("layers.0.q_proj.weight"));
        Assert.Equal(TensorWant.Whole, back.For("anything.else"));

        var reordered = WorkerWants.Parse("""{"tensors":{"b":{"dim":0,"slices":[[6,2],[0,2]]},"a":"none"},"others":"whole"}"""u8);
        var sorted = WorkerWants.Parse("""{"tensors":{"a":"none","b":{"dim":0,"slices":[[0,2],[6,2]]}}}"""u8);
        Assert.Equal(sorted.Digest(), reordered.Digest());
        Assert.NotEqual(sorted.Digest(), new WorkerWants(sorted.Tensors, TensorWant.None).Digest());
    }

    [Theory]
    [InlineData("[]", "wants must be a JSON object")]
    [InlineData("""{"others":"some"}""", "others must be \"whole\" or \"none\"")]
    [InlineData("""{"tensors":[]}""", "\"tensors\" must be an object")]
    [InlineData("""{"tensors":{"w":"half"}}""", "tensor 'w' must be \"whole\" or \"none\"")]
    [InlineData("""{"tensors":{"w":{"dim":0}}}""", "tensor 'w' must be \"whole\", \"none\" or {\"dim\": d")]
    [InlineData("""{"tensors":{"w":{"dim":0,"slices":[[1]]}}}""", "tensor 'w': each slice must be [start, length]")]
    [InlineData("""{"tensors":{"w":"none","w":"whole"}}""", "tensor 'w' appears twice")]
    [InlineData("{", "wants are not valid JSON")]
    public void Parse_Malformed_SaysWhatAndWhere(string json, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => WorkerWants.Parse(Encoding.UTF8.GetBytes(json)));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    public static TheoryData<TensorWant, DType, long[], string?> Problems() => new()
    {
        { TensorWant.Whole, DType.BF16, [8, 16], null },
        { TensorWant.Along(0, new SliceRange(0, 4), new SliceRange(4, 4)), DType.BF16, [8, 16], null },
        { TensorWant.Along(2, new SliceRange(0, 1)), DType.BF16, [8, 16], "dimension 2 is out of range for shape [8, 16]" },
        { TensorWant.Along(0, new SliceRange(0, 1)), DType.F32, [], "dimension 0 is out of range for shape []" },
        { TensorWant.Along(-1, new SliceRange(0, 1)), DType.BF16, [8, 16], "dimension -1 is out of range" },
        { TensorWant.Along(1, new SliceRange(12, 8)), DType.BF16, [8, 16], "slice [12, 20) of dimension 1 is outside [0, 16)" },
        { TensorWant.Along(1, new SliceRange(-1, 2)), DType.BF16, [8, 16], "slice [-1, 1) of dimension 1 is outside [0, 16)" },
        { TensorWant.Along(0, new SliceRange(3, 0)), DType.BF16, [8, 16], "slice [3, 3) of dimension 0 is empty" },
        { TensorWant.Along(0, new SliceRange(0, 4), new SliceRange(3, 2)), DType.BF16, [8, 16], "slices [0, 4) and [3, 5) of dimension 0 overlap" },
        { TensorWant.Along(0), DType.BF16, [8, 16], "no slices along dimension 0 (declare \"none\" to keep nothing)" },
        { TensorWant.Along(1, new SliceRange(1, 2)), DType.F4, [8, 16], "slice [1, 3) of dimension 1 does not fall on whole bytes (F4 is 4 bits an element)" },
        { TensorWant.Along(1, new SliceRange(2, 2)), DType.F4, [8, 16], null },
        { TensorWant.Along(0, new SliceRange(1, 1)), DType.F4, [8, 3], "slice [1, 2) of dimension 0 does not fall on whole bytes" },
        // Rows of 3 F4 elements (12 bits): with two of them, the second does not start on a byte, so no column can be cut;
        // with one row there is nothing after it to misalign.
        { TensorWant.Along(1, new SliceRange(0, 2)), DType.F4, [2, 3], "dimension 1 cannot be sliced: its rows of 12 bits do not start on whole bytes (F4 is 4 bits an element)" },
        { TensorWant.Along(1, new SliceRange(0, 2)), DType.F4, [1, 3], null },
        { TensorWant.Along(1, new SliceRange(0, 16)), DType.BF16, [8, 16], null }, // A slice may end exactly at the dimension's end.
        { TensorWant.Along(1, new SliceRange(0, 17)), DType.BF16, [8, 16], "slice [0, 17) of dimension 1 is outside [0, 16)" },
        { TensorWant.Along(1, new SliceRange(15, 1)), DType.BF16, [8, 16], null },
        { TensorWant.Along(1, new SliceRange(16, 1)), DType.BF16, [8, 16], "slice [16, 17) of dimension 1 is outside [0, 16)" },
        { TensorWant.Along(1, new SliceRange(4, 4), new SliceRange(0, 4)), DType.BF16, [8, 16], null }, // Order does not matter; adjacent is not overlapping.
        { TensorWant.Along(1, new SliceRange(4, 4), new SliceRange(0, 5)), DType.BF16, [8, 16], "slices [0, 5) and [4, 8) of dimension 1 overlap" },
        { TensorWant.Along(1, new SliceRange(2, 2)), DType.F4, [1, 16], null },
        { TensorWant.Along(1, new SliceRange(2, 3)), DType.F4, [1, 16], "slice [2, 5) of dimension 1 does not fall on whole bytes" },
        { TensorWant.Along(0, new SliceRange(0, 1)), DType.BF16, [8], null }, // One dimension: no rows, every element its own index.
    };

    [Fact]
    public void TensorWant_EqualOnlyWithTheSameKindDimensionAndSlices()
    {
        var a = TensorWant.Along(0, new SliceRange(0, 4));
        Assert.Equal(a, TensorWant.Along(0, new SliceRange(0, 4)));
        Assert.NotEqual(a, TensorWant.Along(1, new SliceRange(0, 4)));
        Assert.NotEqual(a, TensorWant.Along(0, new SliceRange(0, 2)));
        Assert.NotEqual(TensorWant.Whole, TensorWant.None);
        Assert.NotEqual(TensorWant.Along(0), TensorWant.Whole);
        Assert.False(a.Equals(null));
        Assert.Equal("dimension 1: [0, 4), [8, 10)", TensorWant.Along(1, new SliceRange(0, 4), new SliceRange(8, 2)).ToString());
        Assert.Throws<ArgumentNullException>(() => new WorkerWants(null!));
    }

    [Fact]
    public void Others_CannotBeSliced()
    {
        var e = Assert.Throws<ArgumentException>(() => new WorkerWants(new Dictionary<string, TensorWant>(), TensorWant.Along(0, new SliceRange(0, 1))));
        Assert.StartsWith("tensors the declaration does not name can be kept whole or not at all, not sliced", e.Message, StringComparison.Ordinal);
        Assert.Equal(TensorWant.None, new WorkerWants(new Dictionary<string, TensorWant>(), TensorWant.None).For("anything"));
        Assert.Equal(TensorWant.Whole, new WorkerWants(new Dictionary<string, TensorWant>()).For("anything"));
    }

    [Theory]
    [InlineData("""{"tensors":{"w":{"dim":0,"slices":[[1,2,3]]}}}""", "each slice must be [start, length] in integers, not [1,2,3]")]
    [InlineData("""{"tensors":{"w":{"dim":0,"slices":[[1,"2"]]}}}""", "each slice must be [start, length] in integers")]
    [InlineData("""{"tensors":{"w":{"dim":0,"slices":[1]}}}""", "each slice must be [start, length] in integers, not 1")]
    [InlineData("""{"tensors":{"w":{"dim":"0","slices":[]}}}""", "tensor 'w' must be \"whole\", \"none\" or")]
    [InlineData("""{"tensors":{"w":{"dim":0,"slices":{}}}}""", "tensor 'w' must be \"whole\", \"none\" or")]
    [InlineData("""{"others":1}""", "others must be \"whole\" or \"none\", not 1")]
    public void Parse_MalformedSlices_SaysWhat(string json, string expected) =>
        Assert.Contains(expected, Assert.Throws<InvalidDataException>(() => WorkerWants.Parse(System.Text.Encoding.UTF8.GetBytes(json))).Message, StringComparison.Ordinal);

    [Fact]
    public void Parse_OthersNone_AndSlices_RoundTrip()
    {
        var wants = WorkerWants.Parse("""{"others":"none","tensors":{"b":"whole","a":{"dim":1,"slices":[[8,8],[0,4]]}}}"""u8);
        Assert.Equal(TensorWant.None, wants.Others);
        Assert.Equal(TensorWant.Along(1, new SliceRange(8, 8), new SliceRange(0, 4)), wants.For("a")); // As declared; the wire form sorts them.
        Assert.Equal(TensorWant.Whole, wants.For("b"));
        Assert.Equal(TensorWant.None, wants.For("c"));
        Assert.Equal("""{"others":"none","tensors":{"a":{"dim":1,"slices":[[0,4],[8,8]]},"b":"whole"}}""", System.Text.Encoding.UTF8.GetString(wants.ToJson()));
    }

    [Theory]
    [MemberData(nameof(Problems))]
    public void Problem_NamesWhatDoesNotFit(TensorWant want, DType dtype, long[] shape, string? expected)
    {
        var problem = WorkerWants.Problem(want, dtype, shape);
        if (expected is null)
        {
            Assert.Null(problem);
        }
        else
        {
            Assert.NotNull(problem);
            Assert.StartsWith(expected, problem, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Problems_NameEveryTensor_UnknownOnesToo()
    {
        var checkpoint = new Dictionary<string, (DType, IReadOnlyList<long>)> { ["layers.0.q_proj.weight"] = (DType.BF16, [6, 16]), ["layers.0.o_proj.weight"] = (DType.BF16, Matrix) };
        Assert.Equal(
            ["tensor 'layers.0.q_proj.weight': slice [4, 8) of dimension 0 is outside [0, 6)", "tensor 'lm_head.weight' is not in the checkpoint"],
            TpRank1Of2().Problems(checkpoint));
    }

    [Fact]
    public async Task Declared_TravelsAfterTheSessionKey_ToTheParameterServer()
    {
        using var ps = FakeParameterServer.Start();
        var wants = TpRank1Of2();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var receiver = WeightReceiver.ReceiveAsync(ps.Ticket.ToString(), wants, (_, _) => { }, null, FakeParameterServer.StepDeadline, cts.Token);
        await ps.AcceptAsync();
        Assert.Equal(wants.Digest(), ps.DeclaredWants?.Digest());
        await cts.CancelAsync();
        await receiver.ContinueWith(static _ => { }, TaskScheduler.Default);
    }

    private static NamedTensor Bf16Matrix(string name) => new(name, DType.BF16, [.. Matrix], Enumerable.Range(0, 8 * 16 * 2).Select(i => (byte)i).ToArray());

    [Fact]
    public async Task Update_WantsThatFit_Succeeds_WantsThatDoNot_FailNamingWorkerTensorAndProblem()
    {
        await using var rank = await SingleRank.StartAsync(Bf16Matrix("layers.0.q_proj.weight"), Bf16Matrix("layers.0.o_proj.weight"));
        var fits = new WorkerWants(new Dictionary<string, TensorWant>
        {
            ["layers.0.q_proj.weight"] = TensorWant.Along(0, new SliceRange(4, 4)),
            ["layers.0.o_proj.weight"] = TensorWant.Along(1, new SliceRange(8, 8)),
        });
        var (report, received) = await rank.UpdateAsync(fits);
        // Only the declared slices arrive, packed: rows 4..7 of q (contiguous), columns 8..15 of every row of o.
        var whole = Enumerable.Range(0, 8 * 16 * 2).Select(i => (byte)i).ToArray();
        Assert.Equal(whole[(4 * 32)..], received["layers.0.q_proj.weight"]);
        Assert.Equal(Enumerable.Range(0, 8).SelectMany(r => whole[(r * 32 + 16)..(r * 32 + 32)]), received["layers.0.o_proj.weight"]);
        Assert.Equal(2 * 128, report.BytesDelivered);
        Assert.Equal((true, 0L), (report.InPlace, report.BytesStaged)); // One host: the parts come out of the registered memory, nothing is staged.
        Assert.Equal(1, report.WorkerClasses);

        var e = await Assert.ThrowsAsync<UpdateFailedException>(() => rank.UpdateAsync(TpRank1Of2()));
        Assert.Contains($"the worker of device '{rank.Server.Device.Id}' declared wants that do not fit checkpoint 'step-1': ", e.Message, StringComparison.Ordinal);
        Assert.Contains("tensor 'lm_head.weight' is not in the checkpoint", e.Message, StringComparison.Ordinal);

        var (plain, again) = await rank.UpdateAsync(); // Declaring nothing: everything, as before; the failure left nothing behind.
        Assert.All(again.Values, bytes => Assert.Equal(whole, bytes));
        Assert.Equal((true, 0L), (plain.InPlace, plain.BytesStaged));

        // The plan is made once per layout and set of declarations and reused (the RL loop), made again when either changes.
        Assert.Equal(2, rank.Server.PartPlans); // The declaration, then nothing declared.
        (_, received) = await rank.UpdateAsync(fits);
        Assert.Equal(whole[(4 * 32)..], received["layers.0.q_proj.weight"]);
        (_, received) = await rank.UpdateAsync(fits);
        Assert.Equal(3, rank.Server.PartPlans); // Back to the first declaration: planned again once, then reused.
        var other = new WorkerWants(new Dictionary<string, TensorWant> { ["layers.0.q_proj.weight"] = TensorWant.Along(0, new SliceRange(0, 4)) });
        (_, received) = await rank.UpdateAsync(other);
        Assert.Equal(whole[..(4 * 32)], received["layers.0.q_proj.weight"]);
        Assert.Equal(whole, received["layers.0.o_proj.weight"]);
        Assert.Equal(4, rank.Server.PartPlans);
        await rank.Server.UnregisterCheckpointAsync("step-1", TestContext.Current.CancellationToken);
        rank.Server.RegisterCheckpoint("step-1", [], [Bf16Matrix("layers.0.q_proj.weight")]); // Another layout under the same name.
        (_, received) = await rank.UpdateAsync(other);
        Assert.Equal([.. received.Keys], ["layers.0.q_proj.weight"]);
        Assert.Equal(5, rank.Server.PartPlans);
    }

    [Fact]
    public async Task Update_WorkerFailsWhileReceivingParts_FailsNamingIt_TheNextUpdateDeliversItsPart()
    {
        await using var rank = await SingleRank.StartAsync(Bf16Matrix("layers.0.q_proj.weight"), Bf16Matrix("layers.0.o_proj.weight"));
        var wants = new WorkerWants(new Dictionary<string, TensorWant> { ["layers.0.o_proj.weight"] = TensorWant.Along(1, new SliceRange(0, 8)) });
        var e = await Assert.ThrowsAsync<UpdateFailedException>(() => rank.Server.UpdateAsync("step-1", UpdateMode.Broadcast, (context, ct) =>
            WeightReceiver.ReceiveAsync(context.Sockets.Single().Ticket.ToString(), wants, (_, tensors) =>
            {
                Assert.Contains(tensors, t => t.Part is not null);
                throw new InvalidOperationException("the engine ran out of memory");
            }, null, SingleRank.Deadline, ct), new UpdateOptions { Timeout = SingleRank.Deadline }, TestContext.Current.CancellationToken));
        Assert.Contains("the engine ran out of memory", e.Message, StringComparison.Ordinal);

        var (_, received) = await rank.UpdateAsync(wants);
        var whole = Enumerable.Range(0, 8 * 16 * 2).Select(i => (byte)i).ToArray();
        Assert.Equal(Enumerable.Range(0, 8).SelectMany(r => whole[(r * 32)..(r * 32 + 16)]), received["layers.0.o_proj.weight"]);
        Assert.Equal(whole, received["layers.0.q_proj.weight"]);
    }
}
