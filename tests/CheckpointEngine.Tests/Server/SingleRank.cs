using CheckpointEngine.Memory;
using CheckpointEngine.Runtime;
using CheckpointEngine.Server;
using CheckpointEngine.Worker;

namespace CheckpointEngine.Tests.Server;

/// <summary>
/// A one-rank world on the host backend holding checkpoint "step-1", whose engine is a real in-process
/// receiver handed each update's ticket: what a worker-link test needs, in one process.
/// </summary>
internal sealed class SingleRank(RankHost host) : IAsyncDisposable
{
    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    public ParameterServer Server => host.Server;

    /// <summary>One U8 tensor "w" holding <paramref name="weights"/>.</summary>
    public static Task<SingleRank> StartAsync(byte[] weights) => StartAsync(new NamedTensor("w", DType.U8, [weights.Length], weights));

    public static async Task<SingleRank> StartAsync(params NamedTensor[] tensors)
    {
        var config = new RankConfig { DeviceId = $"link-test-{Guid.NewGuid():N}", HostDeviceMemory = 16 << 20 };
        var host = await RankHost.StartAsync(config, device: "host", ct: TestContext.Current.CancellationToken);
        host.Server.RegisterCheckpoint("step-1", [], tensors);
        return new SingleRank(host);
    }

    /// <summary>An update whose engine receives with this update's ticket (declaring <paramref name="wants"/>); returns the bytes it got per tensor.</summary>
    public async Task<(UpdateReport Report, Dictionary<string, byte[]> Received)> UpdateAsync(WorkerWants? wants = null, TimeSpan? timeout = null, Action<WorkerTicket>? sawTicket = null)
    {
        var received = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var report = await Server.UpdateAsync("step-1", UpdateMode.Broadcast, async (context, ct) =>
        {
            var ticket = context.Sockets.Single().Ticket;
            sawTicket?.Invoke(ticket);
            await WeightReceiver.ReceiveAsync(ticket.ToString(), wants, (_, tensors) =>
            {
                foreach (var t in tensors)
                {
                    received[t.Name] = t.Span.ToArray();
                }
            }, null, Deadline, ct);
        }, new UpdateOptions { Timeout = timeout ?? Deadline }, TestContext.Current.CancellationToken);
        return (report, received);
    }

    public ValueTask DisposeAsync() => host.DisposeAsync();
}
