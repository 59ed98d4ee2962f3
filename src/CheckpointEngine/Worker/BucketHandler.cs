using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Worker;

/// <summary>
/// Loads one bucket: <paramref name="tensors"/> point into the mapped device buffer and are valid only
/// during the call (copy out what you keep). Each view's <see cref="TensorInfo.DataOffset"/> is its
/// offset in the buffer. Throwing fails the update: the message goes back to the parameter server.
/// </summary>
public delegate void BucketHandler(int bucket, IReadOnlyList<TensorView> tensors);
