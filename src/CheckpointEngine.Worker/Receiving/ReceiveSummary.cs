namespace CheckpointEngine.Worker;

/// <summary>What one update delivered to this worker: buckets and tensors loaded, their bytes, and how long it took.</summary>
public sealed record ReceiveSummary(string DeviceId, int Buckets, int Tensors, long Bytes, TimeSpan Elapsed);
