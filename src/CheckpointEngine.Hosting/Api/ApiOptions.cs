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

    /// <summary>Largest request body accepted; bodies are small JSON documents.</summary>
    public long MaxRequestBodySize { get; init; } = 1 << 20;
}
