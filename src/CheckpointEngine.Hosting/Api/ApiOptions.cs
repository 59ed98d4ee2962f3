namespace CheckpointEngine.Hosting.Api;

/// <summary>Where an <see cref="ApiServer"/> listens and who may call it.</summary>
public sealed record ApiOptions
{
    /// <summary>Serve on this Unix socket (created owner-only, 0600) instead of TCP.</summary>
    public string? UnixSocket { get; init; }

    /// <summary>IP address or "localhost" to listen on (TCP, when <see cref="UnixSocket"/> is null).</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>TCP port; 0 picks a free one (see <see cref="ApiServer.Address"/>).</summary>
    public int Port { get; init; }

    /// <summary>Listen on a non-loopback address: anyone who reaches it can make this rank read files, so set a <see cref="Token"/>.</summary>
    public bool AllowRemote { get; init; }

    /// <summary>When set, every request must carry <c>Authorization: Bearer &lt;token&gt;</c> (the world's <c>CKPT_ENGINE_TOKEN</c> in <c>serve</c>).</summary>
    public string? Token { get; init; }

    /// <summary>
    /// When not empty, registration reads files only inside these directories: a path outside (as written,
    /// or once its links and ".." are resolved) is refused (403) before the file system is touched.
    /// </summary>
    public IReadOnlyList<string> AllowedDirectories { get; init; } = [];

    /// <summary>Hosts an update's <c>update_url</c> may name besides loopback (127.0.0.0/8, ::1, localhost); <c>*</c> allows any.</summary>
    public IReadOnlyList<string> AllowedEngineHosts { get; init; } = [];

    /// <summary>Unix sockets an update's <c>uds</c> may name although this process's user does not own them (nor the engine listening on them).</summary>
    public IReadOnlyList<string> AllowedEngineSockets { get; init; } = [];

    /// <summary>Where to send metrics and update traces over OTLP (the standard <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> in <c>serve</c>); null sends nothing.</summary>
    public Uri? OtlpEndpoint { get; init; }

    /// <summary>Largest request body accepted; bodies are small JSON documents.</summary>
    public long MaxRequestBodySize { get; init; } = 1 << 20;
}
