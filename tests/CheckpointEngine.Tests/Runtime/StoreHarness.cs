using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Runtime.Rendezvous;
using CheckpointEngine.Runtime.Security;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>An in-process rendezvous store on loopback and the clients of one test, all closed at the end.</summary>
internal sealed class StoreHarness : IDisposable
{
    /// <summary>The most any single step of a test may take before it counts as hung.</summary>
    public static readonly TimeSpan StepDeadline = TimeSpan.FromSeconds(5);

    private readonly List<IDisposable> _owned = [];

    private StoreHarness(StoreServer server, string? token)
    {
        Server = server;
        Token = token;
        _owned.Add(server);
    }

    public StoreServer Server { get; }

    public string? Token { get; }

    public int Port => Server.Endpoint.Port;

    /// <summary>A store for a world of <paramref name="worldSize"/> ranks; its refusals are kept in <see cref="Refusals"/>.</summary>
    public static StoreHarness Start(string? token = null, int worldSize = 8)
    {
        var h = new StoreHarness(StoreServer.Start(IPAddress.Loopback, 0, token, worldSize), token);
        h.Server.Handshake.Logger = h.Refusals;
        return h;
    }

    /// <summary>What the store logged about connections it refused.</summary>
    public LogLines Refusals { get; } = new();

    public async Task<StoreClient> ConnectAsync(int rank = -1, string? token = null, bool useHarnessToken = true)
    {
        var client = await StoreClient.ConnectAsync("127.0.0.1", Port, useHarnessToken ? token ?? Token : token, rank, TimeSpan.FromSeconds(3),
            TestContext.Current.CancellationToken).WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
        _owned.Add(client);
        return client;
    }

    /// <summary>
    /// Returns once <paramref name="condition"/> holds of the server, checked again at each of its
    /// <see cref="StoreServer.Changed"/> events (never by sleeping); fails the test past the step deadline.
    /// </summary>
    public async Task UntilAsync(Func<StoreServer, bool> condition, string what)
    {
        while (true)
        {
            var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            void OnChanged() => changed.TrySetResult();
            Server.Changed += OnChanged; // Before looking, so that no change between the look and the wait is missed.
            try
            {
                if (condition(Server))
                {
                    return;
                }
                await changed.Task.WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
            }
            catch (TimeoutException)
            {
                Assert.Fail($"the store never got to: {what}");
            }
            finally
            {
                Server.Changed -= OnChanged;
            }
        }
    }

    /// <summary>A raw TCP connection to the store, for speaking the protocol badly.</summary>
    public async Task<Socket> RawAsync()
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        _owned.Add(socket);
        await socket.ConnectAsync(IPAddress.Loopback, Port, TestContext.Current.CancellationToken).AsTask().WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
        return socket;
    }

    /// <summary>A raw connection that has been through the handshake as <paramref name="rank"/>: requests can be written to it by hand.</summary>
    public async Task<NetworkStream> AuthenticatedAsync(int rank = -1)
    {
        var stream = new NetworkStream(await RawAsync(), ownsSocket: false);
        _owned.Add(stream);
        await new Handshake(Token, Handshake.Store).ConnectAsync(stream, new Handshake.Claim(rank), $"127.0.0.1:{Port}", TestContext.Current.CancellationToken)
            .WaitAsync(StepDeadline, TestContext.Current.CancellationToken);
        return stream;
    }

    public void Dispose()
    {
        foreach (var d in Enumerable.Reverse(_owned))
        {
            d.Dispose();
        }
    }
}
