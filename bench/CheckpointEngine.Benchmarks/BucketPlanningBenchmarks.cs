using System.Collections.Immutable;
using BenchmarkDotNet.Attributes;
using CheckpointEngine.Checkpoints;
using CheckpointEngine.Memory;
using CheckpointEngine.Planning;

namespace CheckpointEngine.Benchmarks;

/// <summary>
/// Planning an update of a 1T-parameter-scale checkpoint: 100k tensors over 256 owner ranks (8 NICs per
/// node), cut into buckets, interleaved over owners, and dealt to P2P receivers. Runs on every rank
/// before every update, so it must stay far below the time of one bucket's copy.
/// </summary>
[MemoryDiagnoser]
public class BucketPlanningBenchmarks
{
    private const int Ranks = 256;
    private const int Tensors = 100_000;
    private const long BucketSize = 2L << 30;

    // Shapes of a transformer's tensors in BF16: norms, projections, experts, embeddings.
    private static readonly long[][] Shapes = [[7168], [7168, 1536], [2048, 7168], [7168, 2048], [24576, 1536], [129280, 7168], [256, 7168]];

    private RankMetas[] _owners = [];
    private IReadOnlyList<H2DBucket>[] _cuts = [];
    private List<(int Owner, H2DBucket Bucket)> _buckets = [];
    private IReadOnlyList<IReadOnlyList<int>> _receivers = [];

    [GlobalSetup]
    public void Setup()
    {
        _owners = Enumerable.Range(0, Ranks).Select(r =>
        {
            var metas = new List<ParameterMeta>();
            long offset = 0;
            for (var i = r; i < Tensors; i += Ranks)
            {
                var shape = Shapes[i % Shapes.Length];
                var bytes = shape.Aggregate(2L, (a, d) => a * d);
                metas.Add(new ParameterMeta($"model.layers.{i / 1000}.mlp.experts.{i % 1000}.w", DType.BF16, [.. shape], offset, bytes));
                offset += BufferLayout.Align(bytes);
            }
            return new RankMetas(r, $"dev-{r}", $"10.0.{r / 8}.1:5000{r % 8}", [new BufferMeta(offset, 0, metas)], NetDevice(r));
        }).ToArray();
        _cuts = Cut();
        _buckets = [.. _cuts.SelectMany(c => c).Select(b => (b.Owner, b))];
        _receivers = ReceiverAssignment.GroupByDevice(Enumerable.Range(0, Ranks), NetDevice);
    }

    [Benchmark]
    public IReadOnlyList<H2DBucket>[] Cut() => [.. _owners.Select(o => BucketPlanner.Cut(o, BucketSize))];

    [Benchmark]
    public int Interleave() => BucketPlanner.Interleave(_cuts).Count;

    [Benchmark]
    public int AssignReceivers() => ReceiverAssignment.Assign(_buckets, NetDevice, _receivers).Count;

    private static string NetDevice(int rank) => $"node{rank / 8}-mlx5_{rank % 8}";
}
