using BenchmarkDotNet.Attributes;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Benchmarks;

/// <summary>Worker-protocol frames: one load message per bucket, here with 1000 tensors (a large MoE bucket), encoded by the parameter server and decoded by the worker.</summary>
[MemoryDiagnoser]
public class WorkerFramingBenchmarks
{
    private WorkerMessage _load = null!;
    private byte[] _frame = [];

    [Params(1000)]
    public int Tensors { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        long offset = 0;
        var tensors = Enumerable.Range(0, Tensors).Select(i =>
        {
            var t = new WireTensor($"model.layers.{i / 64}.mlp.experts.{i % 64}.down_proj.weight", "BF16", [7168, 2048], offset, 7168L * 2048 * 2);
            offset += t.NBytes;
            return t;
        }).ToList();
        _load = new LoadMessage(7, tensors);
        _frame = WorkerFraming.Encode(_load);
    }

    [Benchmark]
    public int Encode() => WorkerFraming.Encode(_load).Length;

    [Benchmark]
    public int Decode() => ((LoadMessage)WorkerFraming.Decode<WorkerMessage>(_frame.AsSpan(4))).Tensors.Count;
}
