namespace CheckpointEngine.Runtime.Collectives;

/// <summary>
/// One broadcast's bytes over one data link between host leaders, as one end saw them. A slow link shows at both ends (its
/// sender blocks, its receiver waits); a slow link upstream makes only receivers wait, one downstream makes only senders block.
/// </summary>
/// <param name="Peer">The world rank at the link's other end.</param>
/// <param name="PeerHost">That rank's address.</param>
/// <param name="Sent">True at the sending end.</param>
/// <param name="Start">When the first chunk went or came (a <see cref="System.Diagnostics.Stopwatch"/> timestamp).</param>
/// <param name="End">When the last chunk went or came (a timestamp).</param>
/// <param name="Busy">Time this end spent blocked in the socket: sending, or waiting for bytes (the header excluded: that is waiting for the sender's turn).</param>
public readonly record struct LinkTransfer(int Peer, string PeerHost, bool Sent, long Bytes, long Start, long End, TimeSpan Busy);
