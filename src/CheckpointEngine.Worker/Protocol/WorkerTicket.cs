using System.Security.Cryptography;

namespace CheckpointEngine.Worker;

/// <summary>
/// What the engine is handed to receive one update on one device: the parameter server's socket
/// address and the update's session key, written "address#session" (64 hex digits). The socket name
/// is public (abstract sockets are listed in /proc/net/unix); the session is not: the worker presents
/// it first thing, so a connection left over from an earlier update, or from anyone who does not hold
/// this update's ticket, is never taken as this update's worker. Treat a ticket as a secret: do not log it.
/// </summary>
public sealed record WorkerTicket(string Address, string Session)
{
    /// <summary>The hex digits of a session key (256 bits).</summary>
    public const int SessionLength = 64;

    /// <summary>A fresh ticket for a socket address, with a random session key.</summary>
    public static WorkerTicket New(string address) => new(address, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(SessionLength / 2)));

    /// <summary>Parses "address#session"; the error says what is missing without echoing the session.</summary>
    public static WorkerTicket Parse(string ticket)
    {
        ArgumentException.ThrowIfNullOrEmpty(ticket);
        var cut = ticket.LastIndexOf('#');
        if (cut <= 0)
        {
            throw new ArgumentException(
                $"'{ticket}' is a bare socket address, not a worker ticket (\"address#session\"): workers take the ticket the parameter server posts with each update", nameof(ticket));
        }
        var session = ticket[(cut + 1)..];
        if (session.Length != SessionLength || !session.All(char.IsAsciiHexDigit))
        {
            throw new ArgumentException($"the worker ticket for {ticket[..cut]} has a malformed session key (expected {SessionLength} hex digits)", nameof(ticket));
        }
        return new WorkerTicket(ticket[..cut], session.ToLowerInvariant());
    }

    /// <summary>True when <paramref name="session"/> is this ticket's key (compared in constant time).</summary>
    public bool Accepts(string? session) =>
        session is { Length: SessionLength } &&
        CryptographicOperations.FixedTimeEquals(System.Text.Encoding.ASCII.GetBytes(session.ToLowerInvariant()), System.Text.Encoding.ASCII.GetBytes(Session));

    public override string ToString() => Address + "#" + Session;
}
