namespace CheckpointEngine.Interop.Cuda;

/// <summary>A CUDA driver call failed: the call, the driver's name for the code (e.g. CUDA_ERROR_OUT_OF_MEMORY) and its text.</summary>
public sealed class CudaException(string call, int code, string name, string description)
    : CheckpointEngineException($"{call} failed: {name} ({code}): {description}")
{
    public string Call { get; } = call;

    public int Code { get; } = code;

    public string ErrorName { get; } = name;
}
