namespace CheckpointEngine.Worker;

/// <summary>
/// Loads one bucket: <paramref name="tensors"/> point into the mapped update buffer and are valid only
/// during the call (copy out what you keep). Throwing fails the update: the message goes back to the
/// parameter server. From a GPU parameter server the tensors are device pointers
/// (<see cref="ReceivedTensor.OnDevice"/>), and the device's CUDA context is current on the calling thread.
/// </summary>
public delegate void BucketHandler(int bucket, IReadOnlyList<ReceivedTensor> tensors);
