namespace CheckpointEngine.Memory;

/// <summary>How <see cref="CheckpointRegistry.RegisterCheckpoint(string, IEnumerable{CheckpointEngine.Checkpoints.FileSelection}, IEnumerable{NamedTensor}?, RegisterOptions?)"/> places a checkpoint in host memory.</summary>
public sealed record RegisterOptions
{
    /// <summary>Take buffers from the registry's pool and give them back on unregister (RL loops: same layout every step).</summary>
    public bool UsePool { get; init; }

    /// <summary>Use the data section of safetensors files on tmpfs (e.g. /dev/shm) as the buffer, without copying. Other files are copied.</summary>
    public bool InPlace { get; init; }

    /// <summary>With <see cref="InPlace"/>: unlink the mapped files once registered, so their memory is freed on unregister. Never the default.</summary>
    public bool DeleteInPlaceFiles { get; init; }

    /// <summary>Threads that copy tensors into buffers.</summary>
    public int CopyThreads { get; init; } = Environment.ProcessorCount;

    /// <summary>
    /// Quantize selected weights to block-scaled FP8 while registering (each <c>X.weight</c> becomes F8_E4M3 plus
    /// <c>X.weight_scale_inv</c>), bit-identical to what <c>ckpt-engine quantize</c> writes; null registers the bytes as they are.
    /// </summary>
    public Quantization.Fp8Quantization? Quantize { get; init; }

    /// <summary>When set, every file must lie inside these directories (files named by an API client).</summary>
    public Checkpoints.AllowedDirectories? AllowedDirectories { get; init; }

    /// <summary>Largest packed buffer. As in the original, a tensor larger than this raises the limit to its own aligned size for every buffer of the checkpoint.</summary>
    public long MaxBufferSize { get; init; } = BufferLayout.DefaultMaxBufferSize;
}
