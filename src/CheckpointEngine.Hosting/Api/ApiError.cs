namespace CheckpointEngine.Hosting.Api;

/// <summary>A request the API turns down: the HTTP status and a message naming the problem, sent as <c>{"error": message}</c>.</summary>
internal sealed class ApiError(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}
