using CheckpointEngine.Memory;
using CheckpointEngine.Server;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Server;

/// <summary>
/// One rank on the host backend, its worker keeping a column slice: a receiver that takes strided parts reads it as rows in the
/// registered segment, or where it was staged (nothing gathered into the slot); one that does not gets it packed by the rank, as before. Same bytes.
/// </summary>
public sealed class StridedPartInPlaceTests
{
    private static readonly byte[] Weights = [.. Enumerable.Range(0, 16 * 40).Select(i => (byte)((i * 29) + 5))];

    private static readonly byte[] Norm = [.. Weights.Take(7)];

    private static readonly WorkerWants Columns = new(new Dictionary<string, TensorWant>
    {
        ["o.weight"] = TensorWant.Along(1, new SliceRange(8, 12)),
    });

    /// <summary>Columns [8, 20) of the [16, 40] tensor, packed.</summary>
    private static byte[] Expected() => [.. Enumerable.Range(0, 16).SelectMany(r => Weights.Skip((r * 40) + 8).Take(12))];

    /// <param name="sharedMemory">False: the registered buffers are private, so the bucket is staged first; its stager's worker then reads it in the staging buffer.</param>
    [Theory]
    [InlineData(true, true)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(false, false)]
    public async Task Update_ColumnSlice_StridedReceiverReadsItInPlace_PackedOneGetsItGathered(bool strided, bool sharedMemory)
    {
        await using var rank = await SingleRank.StartAsync();
        rank.Server.Registry.SharedMemory = sharedMemory;
        rank.Server.RegisterCheckpoint("cols", [], [new NamedTensor("o.weight", DType.U8, [16, 40], Weights), new NamedTensor("norm", DType.U8, [7], Norm)]);
        for (var u = 0; u < 2; u++)
        {
            var received = new Dictionary<string, (byte[] Bytes, bool Packed)>(StringComparer.Ordinal);
            var report = await rank.Server.UpdateAsync("cols", UpdateMode.Broadcast, (context, ct) => WeightReceiver.ReceiveAsync(context.Sockets.Single().Ticket.ToString(),
                Columns, strided, (_, tensors) =>
                {
                    foreach (var t in tensors)
                    {
                        var bytes = new byte[t.Length];
                        t.CopyTo(bytes);
                        received[t.Name] = (bytes, t.IsPacked);
                    }
                }, null, SingleRank.Deadline, ct), new UpdateOptions { Timeout = SingleRank.Deadline }, TestContext.Current.CancellationToken);

            Assert.Equal(sharedMemory, report.InPlace);
            Assert.Equal(strided ? 0 : 16 * 12, report.BytesGathered);
            Assert.Equal(16 * 12 + 7, report.BytesDelivered);
            Assert.Equal(Expected(), received["o.weight"].Bytes);
            Assert.Equal(!strided, received["o.weight"].Packed);
            Assert.Equal(Norm, received["norm"].Bytes);
            Assert.True(received["norm"].Packed);
        }
    }
}
