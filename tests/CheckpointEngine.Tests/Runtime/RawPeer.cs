using System.Net;
using System.Net.Sockets;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>A hostile or broken peer at the socket level: connections that speak a listener's protocol badly or not at all.</summary>
internal static class RawPeer
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static async Task<Socket> ConnectAsync(IPEndPoint endpoint)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(endpoint, Ct).AsTask().WaitAsync(StoreHarness.StepDeadline, Ct);
        return socket;
    }

    /// <summary>Whether the server closes the connection (end of stream or reset) within <paramref name="within"/> (default 3 s), whatever it says first.</summary>
    public static async Task<bool> ClosedByServerAsync(Socket socket, TimeSpan? within = null)
    {
        var buffer = new byte[64 << 10];
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(within ?? TimeSpan.FromSeconds(3));
        try
        {
            while (await socket.ReceiveAsync(buffer, cts.Token) > 0)
            {
            }
            return true;
        }
        catch (SocketException)
        {
            return true;
        }
        catch (OperationCanceledException) when (!Ct.IsCancellationRequested)
        {
            return false;
        }
    }
}
