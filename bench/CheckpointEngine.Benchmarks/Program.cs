// Benchmarks: end-to-end throughput runs that report ratios to a baseline measured in the same run,
// and BenchmarkDotNet micro-benchmarks for everything else.
using BenchmarkDotNet.Running;
using CheckpointEngine.Benchmarks;

return args.FirstOrDefault() switch
{
    "registration" => RegistrationBenchmark.Run(args[1..]),
    "broadcast" => BroadcastBenchmark.Run(args[1..]),
    "broadcast-rank" => BroadcastBenchmark.RunRank(args[1..]),
    "micro" => Micro(args[1..]),
    _ => Usage(),
};

static int Micro(string[] rest)
{
    BenchmarkSwitcher.FromAssembly(typeof(RegistrationBenchmark).Assembly).Run(rest);
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine("usage: CheckpointEngine.Benchmarks registration [--size-gb N] [--repeat N] [--dir DIR]");
    Console.Error.WriteLine("       CheckpointEngine.Benchmarks broadcast [--size-gb N] [--ranks N]");
    Console.Error.WriteLine("       CheckpointEngine.Benchmarks micro [BenchmarkDotNet arguments]");
    return 2;
}
