using System.Net;
using CheckpointEngine.Server;

namespace CheckpointEngine.Hosting;

/// <summary>
/// Waits until the inference engine answers, and tells which HTTP surface it offers when not told. SGLang is
/// recognised by its own update route: a GET of <c>/update_weights_from_ipc</c> answers 405 (the route is there,
/// for POST only; nothing runs), where vLLM and this project's Python endpoint answer 404. That route is what
/// the trigger posts to, it answers before SGLang's first weights (unlike its <c>/health</c>), and a GET changes
/// nothing. Anything else that answers <c>/health</c> with 200 is taken for vLLM's surface.
/// </summary>
public static class EngineProbe
{
    private const string SglangRoute = "/update_weights_from_ipc";

    /// <summary>
    /// As <see cref="WaitAsync(HttpClient, string, EngineApi?, TimeSpan, CancellationToken)"/>, through the client the trigger posts with
    /// (see <see cref="EngineTrigger.ClientFor"/>): over TCP the connection the probe opens stays in the trigger's pool, so a process's
    /// first update does not open one (nor warm up the HTTP stack) inside its timed path.
    /// </summary>
    public static async Task<EngineApi> WaitAsync(string endpoint, string? uds, uint? engineUid, EngineApi? api, TimeSpan timeout, CancellationToken ct = default)
    {
        using var own = uds is null ? null : EngineTrigger.UnixSocketClient(uds, engineUid);
        return await WaitAsync(own ?? EngineTrigger.ClientFor(null), endpoint, api, timeout, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Polls <paramref name="endpoint"/> until the engine is ready: <paramref name="api"/>'s ready path answers 200,
    /// or, with <paramref name="api"/> null, until one of the two surfaces is recognised. Returns the surface.
    /// </summary>
    /// <exception cref="UpdateFailedException">Nothing recognisable answered within <paramref name="timeout"/>; names what was last seen.</exception>
    public static async Task<EngineApi> WaitAsync(HttpClient http, string endpoint, EngineApi? api, TimeSpan timeout, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(http);
        var root = endpoint.TrimEnd('/');
        var deadline = DateTime.UtcNow + timeout;
        var last = "no answer";
        while (true)
        {
            try
            {
                if (api is { } known)
                {
                    var status = await StatusAsync(http, root + EngineTrigger.ReadyPath(known), ct).ConfigureAwait(false);
                    if (Ok(status))
                    {
                        return known;
                    }
                    last = $"{EngineTrigger.ReadyPath(known)}: HTTP {(int)status}";
                }
                else
                {
                    var route = await StatusAsync(http, root + SglangRoute, ct).ConfigureAwait(false);
                    if (route == HttpStatusCode.MethodNotAllowed)
                    {
                        return EngineApi.Sglang;
                    }
                    var health = await StatusAsync(http, root + "/health", ct).ConfigureAwait(false);
                    if (Ok(health))
                    {
                        return EngineApi.Vllm;
                    }
                    last = $"GET {SglangRoute}: HTTP {(int)route}, /health: HTTP {(int)health}";
                }
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
            {
                last = e.Message;
            }
            if (DateTime.UtcNow >= deadline)
            {
                var what = api is { } a
                    ? $"did not become healthy ({EngineTrigger.ReadyPath(a)})"
                    : $"did not answer as vLLM (/health 200) or SGLang ({SglangRoute} 405 to a GET); name it with --engine vllm|sglang";
                throw new UpdateFailedException($"the inference engine at {root} {what} within {timeout.TotalSeconds:F0} s (last: {last})");
            }
            await Task.Delay(200, ct).ConfigureAwait(false);
        }
    }

    private static bool Ok(HttpStatusCode status) => (int)status is >= 200 and < 300;

    /// <summary>How long one probe may wait for an answer (the client's own timeout may be infinite, as the trigger's is).</summary>
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(5);

    private static async Task<HttpStatusCode> StatusAsync(HttpClient http, string url, CancellationToken ct)
    {
        using var request = CancellationTokenSource.CreateLinkedTokenSource(ct);
        request.CancelAfter(RequestTimeout);
        using var response = await http.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, request.Token).ConfigureAwait(false);
        return response.StatusCode;
    }
}
