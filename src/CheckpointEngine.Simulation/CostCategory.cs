namespace CheckpointEngine.Simulation;

/// <summary>What a stretch of an update's critical path is spent on.</summary>
public enum CostCategory
{
    /// <summary>Filling device buffers: host-to-device copies, P2P reads, the original's device-side copy into the broadcast buffer.</summary>
    Staging,

    /// <summary>Bytes crossing NVLink inside a node: broadcasts whose NVLink leg is the slower, scatters inside a node.</summary>
    NvLink,

    /// <summary>Bytes crossing nodes' NICs: broadcasts whose network leg is the slower, class relays between nodes.</summary>
    Network,

    /// <summary>Inference workers taking buckets into their models.</summary>
    Reload,

    /// <summary>Fixed per-call costs: launches, per-hop ring latency, per-bucket agreements, worker round trips.</summary>
    Latency,
}
