namespace CheckpointEngine.Worker;

/// <summary>
/// A weight update failed on the worker side: a handler or hook threw, the parameter server sent a
/// bad or out-of-order message, went silent past the deadline, or disappeared. When the worker
/// replied with an error first, <see cref="Exception.Message"/> is that same text.
/// </summary>
public class WeightReceiveException : CheckpointEngineException
{
    public WeightReceiveException()
    {
    }

    public WeightReceiveException(string message)
        : base(message)
    {
    }

    public WeightReceiveException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
