namespace CheckpointEngine.Simulation;

/// <summary>
/// One bucket of a simulated update, in schedule order, as the real planner cut it.
/// </summary>
/// <param name="Stager">The rank that fills its device buffer and roots its broadcast: the owner, or the P2P receiver.</param>
/// <param name="Step">Its place in its stager's list: the original handles step 0 of every stager, then step 1, ...</param>
/// <param name="ShardBytes">What one GPU needs of it when it takes only its tensor-parallel slice of split tensors.</param>
public readonly record struct PlannedBucket(int Index, int Owner, int Stager, int Step, long Bytes, long ShardBytes, int Tensors);
