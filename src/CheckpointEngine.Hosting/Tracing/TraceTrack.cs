namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// The tracks of one rank in an update trace (the trace-event <c>tid</c>): the whole update, the three
/// pipeline stages, and the two waits between them.
/// </summary>
internal enum TraceTrack
{
    Update = 0,

    /// <summary>Filling the bucket's device buffer: a host-to-device copy (broadcast mode) or a P2P read (P2P mode); only on the bucket's stager.</summary>
    Stage = 1,

    Broadcast = 2,

    /// <summary>From sending the load message to the worker to the ranks agreeing it succeeded.</summary>
    Reload = 3,

    /// <summary>The staged bucket sits in its buffer until its broadcast starts (stager only).</summary>
    WaitForBroadcast = 4,

    /// <summary>The bucket is on every rank; the worker is still busy with the previous one.</summary>
    WaitForReload = 5,
}

internal static class TraceTracks
{
    /// <summary>The pipeline stages, in pipeline order.</summary>
    public static readonly TraceTrack[] Stages = [TraceTrack.Stage, TraceTrack.Broadcast, TraceTrack.Reload];

    public static bool IsStage(this TraceTrack track) => track is TraceTrack.Stage or TraceTrack.Broadcast or TraceTrack.Reload;

    /// <summary>The track's name as users read it; the stage stage is named after what it does in <paramref name="method"/>.</summary>
    public static string Name(this TraceTrack track, string method) => track switch
    {
        TraceTrack.Update => "update",
        TraceTrack.Stage => method == "p2p" ? "p2p read" : "h2d",
        TraceTrack.Broadcast => "broadcast",
        TraceTrack.Reload => "reload",
        TraceTrack.WaitForBroadcast => "wait: staged → broadcast",
        TraceTrack.WaitForReload => "wait: broadcast → reload",
        _ => throw new ArgumentOutOfRangeException(nameof(track)),
    };

    /// <summary>The trace-event category: stages, waits and the update span can be filtered apart.</summary>
    public static string Category(this TraceTrack track) => track switch
    {
        TraceTrack.Update => "update",
        TraceTrack.WaitForBroadcast or TraceTrack.WaitForReload => "wait",
        _ => "stage",
    };
}
