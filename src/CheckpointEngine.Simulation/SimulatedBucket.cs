namespace CheckpointEngine.Simulation;

/// <summary>One bucket's simulated stages, in seconds from the update's start (staging on its stager; its move to every rank of the group, a broadcast or shard-aware a scatter and relays, and the reload).</summary>
public readonly record struct SimulatedBucket(PlannedBucket Bucket, double StageStart, double StageEnd, double BroadcastStart, double BroadcastEnd, double ReloadStart, double ReloadEnd);
