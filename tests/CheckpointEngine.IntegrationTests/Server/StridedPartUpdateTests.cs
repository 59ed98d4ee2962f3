using System.Diagnostics;
using System.Globalization;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.IntegrationTests.Runtime;
using CheckpointEngine.Memory;
using CheckpointEngine.Tests.Support;

namespace CheckpointEngine.IntegrationTests.Server;

/// <summary>
/// Shard-aware updates on one host where workers take their column slices in place (hello "strided"): rank processes and
/// reference workers, a transformer-shaped checkpoint (BF16 attention, FP8 MLP with block scales), each shard's bytes
/// checked against its slice of the source files, and nothing gathered into a slot for a worker that takes strided parts.
/// </summary>
[Collection(nameof(MultiProcessTests))]
public sealed class StridedPartUpdateTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ckpt-strided-").FullName;
    private readonly string _id = Guid.NewGuid().ToString("N")[..8];
    private readonly List<Process> _workers = [];

    public void Dispose()
    {
        TestProcess.KillAndDispose(_workers);
        Directory.Delete(_dir, true);
        SharedMemorySegment.SweepAbandoned(TimeSpan.Zero);
    }

    /// <summary>
    /// Two layers: q/k/v/o in BF16 (o split by columns), gate/up/down in FP8 with 128 × 128 block scales (down and its
    /// scales split by columns), norms and an embedding kept whole; some tensors over the 1 MiB bucket.
    /// </summary>
    private string WriteTransformer()
    {
        var rng = new Random(11);
        TensorToWrite T(string name, DType dtype, params long[] shape)
        {
            var b = new byte[dtype.ByteLength(shape)];
            rng.NextBytes(b);
            return TensorToWrite.FromBytes(name, dtype, shape, b);
        }
        var (hidden, mlp) = (512L, 1024L);
        var dir = Path.Combine(_dir, "model");
        Directory.CreateDirectory(dir);
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), [T("model.embed_tokens.weight", DType.BF16, 1024, hidden), T("model.norm.weight", DType.F32, hidden),
            .. Enumerable.Range(0, 2).SelectMany(i => new[]
            {
                T($"model.layers.{i}.input_layernorm.weight", DType.F32, hidden),
                T($"model.layers.{i}.self_attn.q_proj.weight", DType.BF16, hidden, hidden), T($"model.layers.{i}.self_attn.k_proj.weight", DType.BF16, 128, hidden),
                T($"model.layers.{i}.self_attn.v_proj.weight", DType.BF16, 128, hidden), T($"model.layers.{i}.self_attn.o_proj.weight", DType.BF16, hidden, hidden),
                T($"model.layers.{i}.mlp.gate_proj.weight", DType.F8_E4M3, mlp, hidden), T($"model.layers.{i}.mlp.gate_proj.weight_scale_inv", DType.F32, mlp / 128, hidden / 128),
                T($"model.layers.{i}.mlp.up_proj.weight", DType.F8_E4M3, mlp, hidden), T($"model.layers.{i}.mlp.up_proj.weight_scale_inv", DType.F32, mlp / 128, hidden / 128),
                T($"model.layers.{i}.mlp.down_proj.weight", DType.F8_E4M3, hidden, mlp), T($"model.layers.{i}.mlp.down_proj.weight_scale_inv", DType.F32, hidden / 128, mlp / 128),
            })]);
        return dir;
    }

    private string DeviceId(int rank) => $"strided-{_id}-{rank}";

    private async Task<string> StartWorker(int first, int tp, params string[] extra) =>
        await ReferenceWorkers.RunAsync(ReferenceWorkers.Start(Enumerable.Range(first, tp).Select(DeviceId), ["--shard-by-tp", .. extra]), _workers);

    private Task<RankCluster.Result[]> RunRanks(int ranks, string dir, string[] urls, int tp, int updates) =>
        RankCluster.RunAsync(ranks, ["update", dir, string.Join(',', urls), tp.ToString(CultureInfo.InvariantCulture), updates.ToString(CultureInfo.InvariantCulture)],
            r => new Dictionary<string, string>
            {
                ["CKPT_ENGINE_DEVICE_ID"] = DeviceId(r),
                ["CKPT_ENGINE_MAX_BUCKET_SIZE_GB"] = "0.0009765625", // 1 MiB: several buckets, the embedding over the limit.
                ["TEST_TIMEOUT_S"] = "30",
                ["TEST_DEVICE_MEMORY_MB"] = "64",
            });

    private static long Number(RankCluster.Result r, string prefix, int field) =>
        long.Parse(r.Line(prefix).Split(' ')[field], CultureInfo.InvariantCulture);

    /// <summary>Each shard of the worker at <paramref name="url"/> holds exactly its slice of every tensor it splits, and the rest whole.</summary>
    private static async Task AssertShardsHoldTheirSlices(string dir, string url, int tp)
    {
        var held = await ReferenceWorkers.DigestsAsync(url);
        Assert.Equal(tp, held.Count);
        foreach (var (device, tensors) in held)
        {
            var rank = int.Parse(device[(device.LastIndexOf('-') + 1)..], CultureInfo.InvariantCulture) % tp;
            var expected = ReferenceWorkers.SliceDigests(dir, rank, tp);
            Assert.Equal(expected.OrderBy(kv => kv.Key, StringComparer.Ordinal), tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal));
        }
    }

    /// <summary>
    /// One instance of TP 2 or 4 on one host. The first update shows the workers the layout (they declare nothing yet); the second
    /// and third send each rank only its shard, read in place: the column slices (o_proj, down_proj and down_proj's FP8 block scales)
    /// as rows out of the owners' segments, so no rank gathers a byte into its slot.
    /// </summary>
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public async Task Update_ShardAwareWorkersTakeStridedParts_NothingGathered_ShardsBitExact(int tp)
    {
        var dir = WriteTransformer();
        var url = await StartWorker(0, tp);

        var results = await RunRanks(tp, dir, [url], tp, updates: 3);

        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.Equal("path 2 in-place 0", r.Line("path 2 "));
            Assert.Equal("gathered 2 0", r.Line("gathered 2 "));
            Assert.Equal("gathered 3 0", r.Line("gathered 3 "));
            Assert.True(Number(r, "update 2 ok", 3) < Number(r, "update 1 ok", 3), r.Line("update 2 ok")); // Only the shard was delivered.
        }
        await AssertShardsHoldTheirSlices(dir, url, tp);
    }

    /// <summary>
    /// Two TP 2 instances on one host, one taking strided parts and one not (an older worker): each gets what it can take. The
    /// first instance's ranks gather nothing; the second's gather their column slices into their slots, as before. Both hold
    /// exactly their slices, and both receive the same bytes.
    /// </summary>
    [Fact]
    public async Task Update_StridedAndPackedWorkersMixed_EachGetsWhatItTakes_ShardsBitExact()
    {
        var dir = WriteTransformer();
        string[] urls = [await StartWorker(0, 2), await StartWorker(2, 2, "--packed-parts")];

        var results = await RunRanks(4, dir, urls, 2, updates: 2);

        foreach (var r in results)
        {
            Assert.True(r.ExitCode == 0, $"rank {r.Rank} exited {r.ExitCode}:\n{r.Output}");
            Assert.Equal("path 2 in-place 0", r.Line("path 2 "));
        }
        Assert.All(results.Take(2), r => Assert.Equal("gathered 2 0", r.Line("gathered 2 ")));
        Assert.All(results.Skip(2), r => Assert.True(Number(r, "gathered 2 ", 2) > 0, r.Line("gathered 2 ")));
        Assert.Equal(Number(results[0], "update 2 ok", 3), Number(results[2], "update 2 ok", 3));
        await AssertShardsHoldTheirSlices(dir, urls[0], 2);
        await AssertShardsHoldTheirSlices(dir, urls[1], 2);
    }
}
