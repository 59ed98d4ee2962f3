using System.Net.Http.Json;
using System.Text.Json.Nodes;
using CheckpointEngine.Server;

namespace CheckpointEngine.Hosting;

/// <summary>
/// Tells an inference engine to receive an update the way vLLM expects: the first rank of each
/// inference group POSTs <c>{"method":"update_weights_from_ipc","args":[{device_id: socket}]}</c> with
/// its group's sockets to the engine's <c>/collective_rpc</c>; the reply comes when the workers are done.
/// </summary>
public static class EngineTrigger
{
    private static readonly HttpClient Client = new() { Timeout = Timeout.InfiniteTimeSpan };

    /// <param name="engineUrl">The engine's base URL, or a full URL ending in /collective_rpc.</param>
    /// <param name="inferenceGroupSize">Consecutive ranks that form one engine (its tensor-parallel size).</param>
    public static Func<UpdateContext, CancellationToken, Task> Http(string engineUrl, int inferenceGroupSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inferenceGroupSize, 1);
        var url = engineUrl.TrimEnd('/').EndsWith("/collective_rpc", StringComparison.Ordinal) ? engineUrl : engineUrl.TrimEnd('/') + "/collective_rpc";
        return async (context, ct) =>
        {
            if (context.Rank % inferenceGroupSize != 0)
            {
                return; // The first rank of the group speaks for it.
            }
            var group = context.Sockets.Where(s => s.Rank / inferenceGroupSize == context.Rank / inferenceGroupSize);
            var sockets = new JsonObject();
            foreach (var s in group)
            {
                sockets[s.DeviceId] = s.Address;
            }
            var body = new JsonObject
            {
                ["method"] = "update_weights_from_ipc",
                ["args"] = new JsonArray(sockets),
                ["kwargs"] = new JsonObject(),
            };
            using var response = await Client.PostAsJsonAsync(url, body, ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
                throw new HttpRequestException($"{url} answered {(int)response.StatusCode}: {(text.Length > 500 ? text[..500] + "..." : text)}");
            }
        };
    }
}
