using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Tests.Memory;

/// <summary>
/// A three-file checkpoint on disk (not tmpfs): mixed dtypes with scalars and zero-element tensors,
/// 150 tiny tensors, and one 40 MiB tensor that spans several 16 MiB copy chunks.
/// </summary>
public sealed class RegistrationFixture : IDisposable
{
    public const long BigBytes = 40L << 20;

    private readonly TempDirectory _dir = TempDirectory.OnDisk();

    public RegistrationFixture()
    {
        Mixed = MemoryTestData.Mixed("model.", seed: 100);
        Tiny = MemoryTestData.Tiny("tiny.", 150, seed: 1000);
        Big =
        [
            MemoryTestData.Tensor("big.weight", DType.BF16, [BigBytes / 8, 4], seed: 7),
            MemoryTestData.Tensor("big.bias", DType.F32, [64], seed: 8),
        ];
        MemoryTestData.Write(_dir.File("a-mixed.safetensors"), Mixed);
        MemoryTestData.Write(_dir.File("b-tiny.safetensors"), Tiny);
        MemoryTestData.Write(_dir.File("c-big.safetensors"), Big);
        Files = [_dir.File("a-mixed.safetensors"), _dir.File("b-tiny.safetensors"), _dir.File("c-big.safetensors")];
    }

    public string Directory => _dir.Path;

    public IReadOnlyList<string> Files { get; }

    public List<TensorSpec> Mixed { get; }

    public List<TensorSpec> Tiny { get; }

    public List<TensorSpec> Big { get; }

    public IEnumerable<TensorSpec> All => Mixed.Concat(Tiny).Concat(Big);

    public IEnumerable<FileSelection> Selections => Files.Select(f => new FileSelection(f));

    public void Dispose() => _dir.Dispose();
}
