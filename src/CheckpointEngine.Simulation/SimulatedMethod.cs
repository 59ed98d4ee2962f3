namespace CheckpointEngine.Simulation;

/// <summary>How the simulated update moves buckets (the two modes of the original and of ours).</summary>
public enum SimulatedMethod
{
    /// <summary>Every rank takes part; each owner stages its buckets from host memory and broadcasts them.</summary>
    Broadcast,

    /// <summary>One inference instance (ranks 0..TP−1) reads every bucket from the owners' host memory over RDMA and broadcasts it among itself.</summary>
    P2P,
}
