namespace CheckpointEngine.Runtime.Collectives;

public enum ReduceOp
{
    Sum,
    Min,
    Max,
}
