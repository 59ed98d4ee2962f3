using System.Runtime.InteropServices;
using CheckpointEngine.Interop.Cuda;
using CheckpointEngine.Interop.Nccl;

namespace CheckpointEngine.Tests.Gpu;

/// <summary>The native structures' layouts and the error texts, checked without a GPU.</summary>
public sealed class InteropTests
{
    [Fact]
    public void Structures_HaveTheSizesAndOffsetsOfTheCHeaders()
    {
        Assert.Equal(64, Marshal.SizeOf<CuIpcMemHandle>());
        Assert.Equal(128, Marshal.SizeOf<NcclUniqueId>());
        // ncclConfig_t as of NCCL 2.14: size_t size; unsigned magic, version; int blocking; then tail padding.
        Assert.Equal(24, Marshal.SizeOf<NcclConfig>());
        Assert.Equal(8, (int)Marshal.OffsetOf<NcclConfig>(nameof(NcclConfig.MagicValue)));
        Assert.Equal(12, (int)Marshal.OffsetOf<NcclConfig>(nameof(NcclConfig.Version)));
        Assert.Equal(16, (int)Marshal.OffsetOf<NcclConfig>(nameof(NcclConfig.Blocking)));
        var config = NcclConfig.NonBlocking();
        Assert.Equal(24u, (uint)config.StructSize);
        Assert.Equal(0xcafebeefu, config.MagicValue);
        Assert.Equal(21400u, config.Version);
        Assert.Equal(0, config.Blocking);
        Assert.Equal(int.MinValue, config.TailPadding);
    }

    [Fact]
    public void IpcHandle_RoundTripsThroughBase64_AndRefusesOtherLengths()
    {
        var bytes = Enumerable.Range(0, 64).Select(i => (byte)(i * 7)).ToArray();
        var text = Convert.ToBase64String(bytes);
        Assert.Equal(text, CuIpcMemHandle.FromBase64(text).ToBase64());
        Assert.Throws<FormatException>(() => CuIpcMemHandle.FromBase64(Convert.ToBase64String(new byte[63])));
        Assert.Throws<FormatException>(() => CuIpcMemHandle.FromBase64(Convert.ToBase64String(new byte[65])));
        var e = Assert.Throws<FormatException>(() => CuIpcMemHandle.FromBase64("%%%"));
        Assert.Equal("'%%%' is not a base64 CUDA IPC handle of 64 bytes", e.Message);
    }

    [Fact]
    public void UniqueId_TakesExactly128Bytes()
    {
        var bytes = Enumerable.Range(0, 128).Select(i => (byte)i).ToArray();
        Assert.Equal(bytes, NcclUniqueId.From(bytes).ToArray());
        var e = Assert.Throws<ArgumentException>(() => NcclUniqueId.From(new byte[127]));
        Assert.StartsWith("an NCCL unique id is 128 bytes, got 127", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Uuid_IsWrittenLikeNvidiaSmi()
    {
        var raw = Convert.FromHexString("0123456789abcdef0011223344556677");
        Assert.Equal("GPU-01234567-89ab-cdef-0011-223344556677", CudaDriver.FormatUuid(raw));
    }

    [Fact]
    public void CudaErrors_NameTheCallTheCodeAndTheDriversText()
    {
        var e = CudaDriver.Describe("cuMemAlloc(1024 bytes)", 2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory");
        Assert.Equal("cuMemAlloc(1024 bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory", e.Message);
        Assert.Equal(2, e.Code);
        var unknown = CudaDriver.Describe("cuInit", 9999, null, null);
        Assert.Equal("cuInit failed: CUDA_ERROR_9999 (9999): unknown error code (a driver older than this code?)", unknown.Message);
    }

    [Fact]
    public void NcclErrors_NameTheResult()
    {
        Assert.Equal("ncclInProgress", Nccl.ResultName(7));
        Assert.Equal("ncclRemoteError", Nccl.ResultName(6));
        Assert.Equal("ncclResult(42)", Nccl.ResultName(42));
        var e = new NcclException("ncclBroadcast", 6, "peer 3 closed the connection");
        Assert.Equal("ncclBroadcast failed: ncclRemoteError (6): peer 3 closed the connection", e.Message);
    }
}
