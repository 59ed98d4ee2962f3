using CheckpointEngine.Memory;
using CheckpointEngine.Planning;
using CheckpointEngine.Server;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Planning;

/// <summary>What a proxy cuts out of a bucket for the classes it relays (<see cref="ProxyPart"/>), and what a scattering root sends each member.</summary>
public sealed class ProxyPartTests
{
    // Two 8 × 16-byte U8 matrices: 256 bytes in all.
    private static readonly H2DBucket Bucket = new(0, 0, 256, [new BucketRange(0, 0, 256, 0)],
        [new ParameterMeta("a", DType.U8, [8, 16], 0, 128), new ParameterMeta("b", DType.U8, [8, 16], 128, 128)]);

    private static WorkerWants Rows(long start) => new(new Dictionary<string, TensorWant>
    {
        ["a"] = TensorWant.Along(0, new SliceRange(start, 4)),
        ["b"] = TensorWant.Along(0, new SliceRange(start, 4)),
    });

    /// <summary>
    /// A class that declared nothing is relayed whole: its proxy copies the whole bucket beside the other classes' parts (it may cut its
    /// own part in place, over the bucket), each class at an aligned place of its own.
    /// </summary>
    [Fact]
    public void Of_AClassThatDeclaredNothing_TakesTheWholeBucket_BesideTheOthersParts()
    {
        ClassRelay.Relay Proxied(int c) => new(c, [0, 2], Proxy: true);
        var proxy = ProxyPart.Of(Bucket, [Proxied(0), Proxied(1)], [Rows(0), null]);
        Assert.Equal((0L, 192L), proxy.Classes[0]); // Rows 0-3 of each: 64 bytes, and 64 more where b starts (never past its source).
        Assert.Equal((256L, 256L), proxy.Classes[1]); // The whole bucket, after class 0's part aligned.
        Assert.Equal(512, proxy.Size);
        Assert.Equal([new ByteRun(0, 0, 64), new ByteRun(128, 128, 64), new ByteRun(0, 256, 256)], proxy.Runs);
    }

    /// <summary>The packed size of a part the root of a scatter sends and its member receives: up to the end of its last run, padding included.</summary>
    [Fact]
    public void PackedSize_EndsAtTheLastRun()
    {
        var part = BucketPart.Of(Bucket, Rows(4));
        Assert.Equal(part.Size, CheckpointEngine.Runtime.Collectives.NcclCommunicator.PackedSize(part.Runs));
        Assert.Equal(0, CheckpointEngine.Runtime.Collectives.NcclCommunicator.PackedSize([]));
        Assert.Equal(300, CheckpointEngine.Runtime.Collectives.NcclCommunicator.PackedSize([new ByteRun(0, 256, 44), new ByteRun(100, 0, 10)]));
    }
}
