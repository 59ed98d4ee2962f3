using CheckpointEngine.Checkpoints;

namespace CheckpointEngine.Worker;

/// <summary>
/// Loads one bucket: <paramref name="tensors"/> point into the mapped device buffer and are valid only
/// during the call (copy out what you keep). Each view's <see cref="TensorInfo.DataOffset"/> is its
/// offset in the buffer. Throwing fails the update: the message goes back to the parameter server.
/// From a GPU parameter server the views are device pointers (<see cref="TensorView.OnDevice"/>), and
/// the device's CUDA context is current on the calling thread.
/// </summary>
public delegate void BucketHandler(int bucket, IReadOnlyList<TensorView> tensors);
