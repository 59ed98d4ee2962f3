namespace CheckpointEngine.Server;

/// <summary>
/// One bucket's bytes over one data link to or from another host, on this rank (see <see cref="Runtime.Collectives.LinkTransfer"/>):
/// when they went, as offsets from the update's start, and how long this end was blocked in the socket.
/// </summary>
/// <param name="Bucket">The bucket whose broadcast carried them (−1: outside every bucket's turn).</param>
/// <param name="Peer">The world rank at the other end.</param>
/// <param name="PeerHost">Its address.</param>
/// <param name="Sent">True where this rank sent them.</param>
public sealed record LinkTiming(int Bucket, int Peer, string PeerHost, bool Sent, long Bytes, TimeSpan Start, TimeSpan End, TimeSpan Busy)
{
    /// <summary>Bytes per second while this end was blocked; a slow link is slow at both its ends (infinite when never blocked).</summary>
    public double Rate => Busy > TimeSpan.Zero ? Bytes / Busy.TotalSeconds : double.PositiveInfinity;
}
