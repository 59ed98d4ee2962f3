namespace CheckpointEngine.Worker;

/// <summary>The parameter server aborted the update (it failed elsewhere); <see cref="Reason"/> is what it said.</summary>
public sealed class WeightUpdateAbortedException : WeightReceiveException
{
    public WeightUpdateAbortedException()
        : this("")
    {
    }

    public WeightUpdateAbortedException(string reason)
        : base($"the parameter server aborted the update: {reason}")
    {
        Reason = reason;
    }

    public WeightUpdateAbortedException(string message, Exception? innerException)
        : base(message, innerException)
    {
        Reason = message;
    }

    public string Reason { get; }
}
