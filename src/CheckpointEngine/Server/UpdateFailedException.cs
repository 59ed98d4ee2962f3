namespace CheckpointEngine.Server;

/// <summary>An update did not complete on every rank. The message says where it failed and why (a worker's own error text, a dead rank).</summary>
public sealed class UpdateFailedException(string message, Exception? inner = null) : Exception(message, inner);
