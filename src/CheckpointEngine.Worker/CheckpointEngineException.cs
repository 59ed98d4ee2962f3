namespace CheckpointEngine;

/// <summary>
/// An error a user can act on: bad input (a file, a flag, a body, a setting), a failed update, an
/// unavailable backend, a lost peer. Its message says what and where; it is reported without a stack
/// trace. Hosts catch this one type; anything else is a bug of ours.
/// </summary>
public class CheckpointEngineException : Exception
{
    public CheckpointEngineException()
    {
    }

    public CheckpointEngineException(string message)
        : base(message)
    {
    }

    public CheckpointEngineException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
