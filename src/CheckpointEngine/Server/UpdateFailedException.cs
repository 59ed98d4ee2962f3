namespace CheckpointEngine.Server;

/// <summary>An update did not complete on every rank. The message says where it failed and why (a worker's own error text, a dead rank).</summary>
public class UpdateFailedException(string message, Exception? inner = null) : CheckpointEngineException(message, inner);
