using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using CheckpointEngine.Server;

namespace CheckpointEngine.Hosting;

/// <summary>
/// Tells an inference engine to receive an update the way vLLM expects: the first rank of each
/// inference group POSTs <c>{"method":"update_weights_from_ipc","args":[{device_id: ticket}]}</c> with
/// its group's worker tickets ("socket#session", see <see cref="Worker.WorkerTicket"/>) to the engine's
/// <c>/collective_rpc</c>; the reply comes when the workers are done. <see cref="EngineApi.Sglang"/>: SGLang's
/// <c>/update_weights_from_ipc</c> instead, with the checkpoint's name as the <c>weight_version</c> SGLang reports. The body goes with a Content-Length (not chunked), which every
/// HTTP server reads, Python's <c>http.server</c> included.
/// </summary>
public static class EngineTrigger
{
    // No redirects: a loopback engine must not be able to send the worker tickets on to another host.
    private static readonly HttpClient Tcp = new(new SocketsHttpHandler { AllowAutoRedirect = false }) { Timeout = Timeout.InfiniteTimeSpan };

    /// <param name="engineUrl">The engine's base URL, or a full URL ending in /collective_rpc.</param>
    /// <param name="inferenceGroupSize">Consecutive ranks that form one engine (its tensor-parallel size).</param>
    /// <param name="uds">The engine's HTTP server on a Unix socket instead of TCP (the URL's host is then ignored).</param>
    /// <param name="engineUid">When set, the process listening on <paramref name="uds"/> must run as this user (SO_PEERCRED).</param>
    /// <param name="api">The engine's HTTP surface (vLLM's by default).</param>
    public static Func<UpdateContext, CancellationToken, Task> Http(string engineUrl, int inferenceGroupSize, string? uds = null, uint? engineUid = null, EngineApi api = EngineApi.Vllm)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inferenceGroupSize, 1);
        return Post(engineUrl, uds, engineUid, api, context => context.Sockets.Where(s => s.Rank / inferenceGroupSize == context.Rank / inferenceGroupSize).ToList());
    }

    /// <summary>
    /// The client the trigger posts with to an engine on TCP (<paramref name="uds"/> null): one per process, whose pooled connections a
    /// readiness probe through it leaves open for the first update. For a Unix socket, a new client the caller disposes.
    /// </summary>
    public static HttpClient ClientFor(string? uds, uint? engineUid = null) => uds is null ? Tcp : UnixSocketClient(uds, engineUid);

    /// <summary>The path that answers 200 once the engine takes updates.</summary>
    public static string ReadyPath(EngineApi api) => api == EngineApi.Sglang ? "/ping" : "/health";

    /// <summary>One engine served by exactly <paramref name="groupRanks"/> (all taking part ranks when empty), as the original's HTTP API has it.</summary>
    public static Func<UpdateContext, CancellationToken, Task> Http(string engineUrl, IReadOnlyList<int> groupRanks, string? uds = null, uint? engineUid = null, EngineApi api = EngineApi.Vllm) =>
        Post(engineUrl, uds, engineUid, api, context => context.Sockets.Where(s => groupRanks.Count == 0 || groupRanks.Contains(s.Rank)).ToList());

    private static Func<UpdateContext, CancellationToken, Task> Post(string engineUrl, string? uds, uint? engineUid, EngineApi api, Func<UpdateContext, List<WorkerSocket>> groupOf)
    {
        var path = api == EngineApi.Sglang ? "/update_weights_from_ipc" : "/collective_rpc";
        var url = engineUrl.TrimEnd('/').EndsWith(path, StringComparison.Ordinal) ? engineUrl : engineUrl.TrimEnd('/') + path;
        return async (context, ct) =>
        {
            var group = groupOf(context);
            if (group.Count == 0 || group.Min(s => s.Rank) != context.Rank)
            {
                return; // The first rank of the group speaks for it.
            }
            var sockets = new JsonObject();
            foreach (var s in group)
            {
                sockets[s.DeviceId] = s.Ticket.ToString();
            }
            var body = api == EngineApi.Sglang
                ? new JsonObject { ["zmq_handles"] = sockets, ["flush_cache"] = true, ["weight_version"] = context.Checkpoint }
                : new JsonObject { ["method"] = "update_weights_from_ipc", ["args"] = new JsonArray(sockets), ["kwargs"] = new JsonObject() };
            using var content = new ByteArrayContent(System.Text.Encoding.UTF8.GetBytes(body.ToJsonString()));
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            // A Unix-socket client per call: one connection per update costs nothing next to the update, and a
            // cache keyed by path would keep a client for every socket path a request ever named.
            using var own = uds is null ? null : UnixSocketClient(uds, engineUid);
            using var response = await (own ?? Tcp).PostAsync(url, content, ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
                throw new HttpRequestException($"{url} answered {(int)response.StatusCode}: {(text.Length > 500 ? text[..500] + "..." : text)}");
            }
        };
    }

    /// <summary>An HTTP client whose every connection goes to the Unix socket at <paramref name="path"/>.</summary>
    /// <param name="peerUid">When set, a connection whose listening process runs as another user is refused (SO_PEERCRED).</param>
    public static HttpClient UnixSocketClient(string path, uint? peerUid = null) => new(new SocketsHttpHandler
    {
        AllowAutoRedirect = false,
        ConnectCallback = async (_, ct) =>
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct).ConfigureAwait(false);
                if (peerUid is { } expected && Worker.PeerCredentials.Of(socket).Uid is var actual && actual != expected)
                {
                    throw new HttpRequestException($"the engine on {path} runs as uid {actual}, not as this server's user (uid {expected}); allow-list the socket to use it anyway");
                }
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    })
    { Timeout = Timeout.InfiniteTimeSpan };
}
