namespace CheckpointEngine.Hosting.Tracing;

/// <summary>A trace file that cannot be read; the message names the file and what is wrong.</summary>
internal sealed class TraceFormatException(string message, Exception? inner = null) : CheckpointEngineException(message, inner);
