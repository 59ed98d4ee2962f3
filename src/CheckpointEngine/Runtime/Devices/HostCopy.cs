namespace CheckpointEngine.Runtime.Devices;

/// <summary>One host-to-device copy of a bucket: <see cref="Length"/> bytes from host <see cref="Source"/> to device <see cref="Destination"/>.</summary>
public readonly record struct HostCopy(nint Source, nint Destination, long Length);
