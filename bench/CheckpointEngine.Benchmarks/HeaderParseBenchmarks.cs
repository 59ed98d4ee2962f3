using System.Text;
using BenchmarkDotNet.Attributes;
using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Benchmarks;

/// <summary>Parsing and validating a large safetensors header (a 1T-parameter checkpoint has ~100k tensors over ~1k files; one file of an MoE model can hold 10k).</summary>
[MemoryDiagnoser]
public class HeaderParseBenchmarks
{
    private byte[] _json = [];
    private long _dataLength;

    [Params(100, 2000, 10_000)]
    public int Tensors { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var sb = new StringBuilder("{\"__metadata__\":{\"format\":\"pt\"}");
        long offset = 0;
        for (var i = 0; i < Tensors; i++)
        {
            var bytes = 4096L * 2;
            sb.Append($",\"model.layers.{i / 10}.mlp.experts.{i % 10}.weight\":{{\"dtype\":\"BF16\",\"shape\":[64,64],\"data_offsets\":[{offset},{offset + bytes}]}}");
            offset += bytes;
        }
        _json = Encoding.UTF8.GetBytes(sb.Append('}').ToString());
        _dataLength = offset;
    }

    [Benchmark]
    public int Parse() => SafeTensorsHeader.Parse(_json, _dataLength, "bench.safetensors").Tensors.Count;
}
