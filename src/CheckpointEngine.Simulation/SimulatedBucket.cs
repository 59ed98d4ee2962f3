namespace CheckpointEngine.Simulation;

/// <summary>One bucket's simulated stages, in seconds from the update's start (staging on its stager; broadcast and reload on every rank of the group).</summary>
public readonly record struct SimulatedBucket(PlannedBucket Bucket, double StageStart, double StageEnd, double BroadcastStart, double BroadcastEnd, double ReloadStart, double ReloadEnd);
