// BenchmarkDotNet micro-benchmarks, one class per area. End-to-end measurements (updates, registration,
// collectives, against baselines measured in the same run) are `ckpt-engine bench`.
using BenchmarkDotNet.Running;
using CheckpointEngine.Benchmarks;

BenchmarkSwitcher.FromAssembly(typeof(HeaderParseBenchmarks).Assembly).Run(args);
