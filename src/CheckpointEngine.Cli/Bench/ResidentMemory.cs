namespace CheckpointEngine.Cli.Bench;

/// <summary>A process's resident memory at one moment (VmRSS = anonymous + file + shared memory), in one unit.</summary>
internal readonly record struct ResidentMemory(long Total, long Anonymous, long File, long Shared)
{
    public ResidentMemory InKiB => new(Total / 1024, Anonymous / 1024, File / 1024, Shared / 1024);
}
