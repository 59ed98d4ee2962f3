using System.Text.Json;

namespace CheckpointEngine.Tests.Support;

/// <summary>Bodies of the HTTP API's requests, as clients send them.</summary>
public static class RegisterBody
{
    /// <summary><c>POST /v1/checkpoints/{name}/files</c>: <c>{"files": [...]}</c>.</summary>
    public static string Files(params string[] files) => JsonSerializer.Serialize(new { files });
}
