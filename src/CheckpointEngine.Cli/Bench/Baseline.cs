namespace CheckpointEngine.Cli.Bench;

/// <summary>One of the machine's limits as measured in this run (see <see cref="Baselines"/>).</summary>
internal sealed record Baseline(string Key, string Label, long Bytes, double Seconds, string? Note = null)
{
    public const string Memcpy = "memcpy_1_thread";
    public const string MemcpyAllThreads = "memcpy_all_threads";
    public const string SharedMemory = "shm_2_processes";
    public const string Tcp = "tcp_loopback";

    public double Gbps => Bytes / Math.Max(Seconds, 1e-12) / 1e9;

    /// <summary>
    /// The key of a baseline measured with <paramref name="streams"/> copies (or connections) running at once, each of
    /// <see cref="Bytes"/>: what bounds each of that many workers when they all receive at the same time on this machine.
    /// </summary>
    public static string AtOnce(string key, int streams) => $"{key}_{streams}_at_once";

    /// <summary>
    /// What a method (and case) is compared with: a broadcast on one host, a registration and the shared-memory
    /// collective are copying (memcpy), and so is a UCX P2P update (one-sided reads: one copy by the kernel or the NIC);
    /// a TCP P2P update (an elastic join's too) and the collective's TCP chain are TCP.
    /// </summary>
    public static string For(string method, string? @case = null) =>
        method is "p2p" or BenchSettings.P2PTcp or BenchSettings.P2PJoin || (method == BenchSettings.Collective && @case == CollectiveBench.TcpChain) ? Tcp : Memcpy;
}
