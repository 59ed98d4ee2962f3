namespace CheckpointEngine.Cli.Bench;

/// <summary>One of the machine's limits as measured in this run (see <see cref="Baselines"/>).</summary>
internal sealed record Baseline(string Key, string Label, long Bytes, double Seconds, string? Note = null)
{
    public const string Memcpy = "memcpy_1_thread";
    public const string MemcpyAllThreads = "memcpy_all_threads";
    public const string SharedMemory = "shm_2_processes";
    public const string Tcp = "tcp_loopback";

    public double Gbps => Bytes / Math.Max(Seconds, 1e-12) / 1e9;

    /// <summary>What a method is compared with: a broadcast on one host is copying (memcpy), a P2P update is TCP.</summary>
    public static string For(string method) => method == "p2p" ? Tcp : Memcpy;
}
