using System.Net;
using System.Net.Sockets;
using System.Text;

namespace CheckpointEngine.Tests.Api;

/// <summary>
/// A fake inference engine that takes one request and holds it until released, then answers 500: an
/// update blocked inside its trigger for as long as a test needs, with no sleeps.
/// </summary>
internal sealed class BlockingEngine : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly TaskCompletionSource _requested = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _serving;

    public BlockingEngine(string answer)
    {
        _listener.Start();
        Url = $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        _serving = ServeAsync(answer);
    }

    public string Url { get; }

    /// <summary>Completes when the request has arrived (its headers and body read).</summary>
    public Task Requested => _requested.Task;

    public void Release() => _release.TrySetResult();

    /// <summary>The request as it arrived (request line, headers, body), once <see cref="Requested"/> has completed.</summary>
    public string Request { get; private set; } = "";

    private async Task ServeAsync(string answer)
    {
        using var client = await _listener.AcceptTcpClientAsync();
        var stream = client.GetStream();
        var received = new StringBuilder();
        var buffer = new byte[4096];
        // Reads the request: headers, then a body of Content-Length bytes or chunks up to the last one.
        while (!IsComplete(received.ToString()))
        {
            var n = await stream.ReadAsync(buffer);
            if (n == 0)
            {
                return;
            }
            received.Append(Encoding.UTF8.GetString(buffer, 0, n));
        }
        Request = received.ToString();
        _requested.TrySetResult();
        await _release.Task;
        var body = Encoding.UTF8.GetBytes(answer);
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"));
        await stream.WriteAsync(body);
    }

    private static bool IsComplete(string request)
    {
        var end = request.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (end < 0)
        {
            return false;
        }
        var headers = request[..end].ToLowerInvariant();
        var body = request[(end + 4)..];
        if (headers.Contains("transfer-encoding: chunked", StringComparison.Ordinal))
        {
            return body.EndsWith("0\r\n\r\n", StringComparison.Ordinal);
        }
        var length = headers.Split("\r\n").FirstOrDefault(l => l.StartsWith("content-length:", StringComparison.Ordinal));
        return length is null || Encoding.UTF8.GetByteCount(body) >= int.Parse(length["content-length:".Length..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    public void Dispose()
    {
        Release();
        _listener.Stop();
        try
        {
            _serving.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
            // The listener stopped before a request came.
        }
        _listener.Dispose();
    }
}
