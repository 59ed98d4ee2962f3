using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using static CheckpointEngine.Runtime.Rendezvous.StoreProtocol;

namespace CheckpointEngine.Runtime.Security;

/// <summary>
/// The handshake every connection between ranks opens with (rendezvous store, data links, P2P store):
/// mutual challenge–response on the shared token (<c>CKPT_ENGINE_TOKEN</c>), so that neither the token
/// nor anything replayable crosses the wire, and a listener spends at most a few KiB and a deadline on
/// a peer that has not proved itself.
/// </summary>
/// <remarks>
/// Frames as the store's (a 4-byte length, then fields), each at most <see cref="MaxFrame"/> bytes:
/// <code>
/// client → server  hello:     magic, listener, client nonce, claimed rank, group
/// server → client  challenge: Ok, server nonce            (Error, why: a hello for another listener)
/// client → server  proof:     HMAC(token, "client" | listener | client nonce | server nonce | rank | group)
/// server → client  Ok, HMAC(token, "server" | the same)    (Error, why: wrong token, rank refused)
/// </code>
/// HMAC is HMAC-SHA256. Fresh nonces from both sides make every proof good for one connection only: a
/// recorded handshake replayed on a new connection fails, and the server proves it knows the token too.
/// The server checks the proof before it looks at the claim, so an unauthenticated peer never changes
/// state. Without a token the same exchange runs with an empty key: one code path that still checks the
/// protocol and the claimed rank, but proves nothing (a non-loopback world refuses to start that way
/// unless allowed, see <see cref="World.JoinAsync"/>). What follows the handshake is neither encrypted
/// nor signed: an attacker on the path between two ranks is outside this model.
/// </remarks>
internal sealed class Handshake(string? token, string listener)
{
    public const string Store = "rendezvous store";
    public const string DataLink = "data-link listener";
    public const string P2P = "P2P store";

    /// <summary>No handshake frame is larger: before authentication a peer gets at most this much buffer.</summary>
    public const int MaxFrame = 4 << 10;

    private const string Magic = "ckpt-engine-handshake/1";
    private const int NonceBytes = 32;

    private readonly byte[] _key = Encoding.UTF8.GetBytes(token ?? "");
    private int _pending;

    /// <summary>Which listener this handshake is for (one of <see cref="Store"/>, <see cref="DataLink"/>, <see cref="P2P"/>); it is part of every proof.</summary>
    public string Listener { get; } = listener;

    /// <summary>How long an accepted peer has to complete the handshake.</summary>
    public TimeSpan Deadline { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Connections in their handshake at once; one more is closed without reading a byte.</summary>
    public int MaxPending { get; set; } = 64;

    /// <summary>Where refused connections are reported, as warnings (default: standard error).</summary>
    public ILogger Logger { get; set; } = StandardErrorLogger.Instance;

    /// <summary>Connections accepted and not yet through their handshake.</summary>
    public int Pending => Volatile.Read(ref _pending);

    /// <summary>Raised when <see cref="Pending"/> changed: tests await these moments instead of sleeping through them.</summary>
    public event Action? PendingChanged;

    /// <summary>What a client says it is: a world rank (−1 for a tool or reader that is not one) and, for a data link, its group.</summary>
    public readonly record struct Claim(int Rank, string Group = "");

    /// <summary>
    /// The client side: proves the token and checks that the server knows it too. Throws
    /// <see cref="HandshakeException"/> when the server refused (its reason included) or did not prove
    /// itself, and <see cref="IOException"/> when the connection broke.
    /// </summary>
    public async Task ConnectAsync(Stream stream, Claim claim, string server, CancellationToken ct)
    {
        var clientNonce = RandomNumberGenerator.GetBytes(NonceBytes);
        await WriteAsync(stream, new Writer().String(Magic).String(Listener).Bytes(clientNonce).Int32(claim.Rank).String(claim.Group), ct).ConfigureAwait(false);
        var serverNonce = Expect(await ReadAsync(stream, ct).ConfigureAwait(false), claim, server);
        await WriteAsync(stream, new Writer().Bytes(Mac("client", clientNonce, serverNonce, claim)), ct).ConfigureAwait(false);
        var proof = Expect(await ReadAsync(stream, ct).ConfigureAwait(false), claim, server);
        if (!CryptographicOperations.FixedTimeEquals(proof, Mac("server", clientNonce, serverNonce, claim)))
        {
            throw new HandshakeException(
                $"the {Listener} at {server} did not prove it knows the token: it is not one of ours, or runs with another {RankConfig.TokenVariable}");
        }
    }

    /// <summary>
    /// The server side, on a connection just accepted, within <see cref="Deadline"/>: returns the peer's
    /// claim once it proved the token and <paramref name="admit"/> (which may take a slot) returned no
    /// refusal; null when it failed (logged, naming the peer and why) or when <see cref="MaxPending"/>
    /// connections are in their handshake already (closed at once, unlogged: a flood must not flood the
    /// log). The caller closes a refused connection. <paramref name="unadmit"/> gives the slot back when
    /// the peer never heard that it was admitted.
    /// </summary>
    public async Task<Claim?> AcceptAsync(Stream stream, EndPoint? peer, Func<Claim, string?> admit, Action<Claim>? unadmit, CancellationToken stop)
    {
        if (Interlocked.Increment(ref _pending) > MaxPending)
        {
            Interlocked.Decrement(ref _pending);
            return null;
        }
        PendingChanged?.Invoke();
        Claim? claimed = null;
        var authenticated = false;
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(stop);
            deadline.CancelAfter(Deadline);
            var ct = deadline.Token;
            var hello = new Reader(await ReadAsync(stream, ct).ConfigureAwait(false));
            if (hello.String() != Magic)
            {
                throw new InvalidDataException("not a ckpt-engine handshake");
            }
            var wanted = hello.String();
            var clientNonce = hello.Bytes();
            var claim = new Claim(hello.Int32(), hello.String());
            claimed = claim;
            if (wanted != Listener)
            {
                throw await RefuseAsync(stream, $"this is a {Listener}, not a {wanted}", ct).ConfigureAwait(false);
            }
            if (clientNonce.Length != NonceBytes)
            {
                throw new InvalidDataException($"a nonce of {clientNonce.Length} bytes, not {NonceBytes}");
            }
            var serverNonce = RandomNumberGenerator.GetBytes(NonceBytes);
            await WriteAsync(stream, new Writer().Byte((byte)Status.Ok).Bytes(serverNonce), ct).ConfigureAwait(false);
            var proof = new Reader(await ReadAsync(stream, ct).ConfigureAwait(false)).Bytes();
            if (!CryptographicOperations.FixedTimeEquals(proof, Mac("client", clientNonce, serverNonce, claim)))
            {
                throw await RefuseAsync(stream, $"wrong token (check that {RankConfig.TokenVariable} is the same on every rank)", ct).ConfigureAwait(false);
            }
            authenticated = true;
            if (admit(claim) is { } refusal)
            {
                throw await RefuseAsync(stream, refusal, ct).ConfigureAwait(false);
            }
            try
            {
                await WriteAsync(stream, new Writer().Byte((byte)Status.Ok).Bytes(Mac("server", clientNonce, serverNonce, claim)), ct).ConfigureAwait(false);
            }
            catch
            {
                unadmit?.Invoke(claim);
                throw;
            }
            return claim;
        }
        catch (Exception e) when (e is HandshakeException or IOException or SocketException or InvalidDataException or OperationCanceledException or ObjectDisposedException)
        {
            if (!stop.IsCancellationRequested)
            {
                var why = e switch
                {
                    OperationCanceledException => $"no handshake within {Deadline.TotalSeconds:0.###} s",
                    HandshakeException => e.Message,
                    _ => $"broken handshake: {e.Message}",
                };
                var who = claimed is { Rank: not -1 } c ? $"rank {c.Rank}" : "a peer";
                Logger.LogWarning("{Listener}: {Who} at {Peer} {Verdict}: {Reason}", Listener, who, peer, authenticated ? "was refused" : "failed authentication", why);
            }
            return null;
        }
        finally
        {
            Interlocked.Decrement(ref _pending);
            PendingChanged?.Invoke();
        }
    }

    private byte[] Mac(string role, byte[] clientNonce, byte[] serverNonce, Claim claim) =>
        HMACSHA256.HashData(_key, new Writer().String(role).String(Listener).Bytes(clientNonce).Bytes(serverNonce).Int32(claim.Rank).String(claim.Group).ToFrame().Span);

    /// <summary>The field after an Ok status; a refusal becomes an exception carrying the server's reason.</summary>
    private byte[] Expect(byte[] frame, Claim claim, string server)
    {
        var reader = new Reader(frame);
        return (Status)reader.Byte() switch
        {
            Status.Ok => reader.Bytes(),
            Status.Error => throw new HandshakeException($"the {Listener} at {server} refused {(claim.Rank == -1 ? "this connection" : $"rank {claim.Rank}")}: {reader.String()}"),
            var s => throw new InvalidDataException($"the {Listener} at {server} answered the handshake with status {s}"),
        };
    }

    private static async Task<HandshakeException> RefuseAsync(Stream stream, string why, CancellationToken ct)
    {
        try
        {
            await WriteAsync(stream, new Writer().Byte((byte)Status.Error).String(why), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The peer left; the refusal is logged all the same.
        }
        return new HandshakeException(why);
    }

    private static async Task<byte[]> ReadAsync(Stream stream, CancellationToken ct) =>
        await ReadFrameAsync(stream, ct, MaxFrame).ConfigureAwait(false) ?? throw new IOException("the connection closed during the handshake");

    private static async Task WriteAsync(Stream stream, Writer frame, CancellationToken ct) =>
        await stream.WriteAsync(frame.ToFrame(), ct).ConfigureAwait(false);
}

/// <summary>A handshake failed on purpose: wrong token, a refused claim, a server that could not prove itself.</summary>
internal sealed class HandshakeException(string message) : CheckpointEngineException(message);
