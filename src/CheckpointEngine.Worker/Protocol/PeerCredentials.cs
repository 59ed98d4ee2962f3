using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace CheckpointEngine.Worker;

/// <summary>
/// Who is on the other end of a Unix socket (SO_PEERCRED: the kernel's record of the peer process, which
/// the peer cannot forge). Both ends of the worker link accept only a peer running as their own user.
/// </summary>
public static class PeerCredentials
{
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    /// <summary>The effective user id of this process.</summary>
    public static uint CurrentUser => Interop.Posix.GetEffectiveUid();

    /// <summary>The peer process's pid and user id.</summary>
    public static (int Pid, uint Uid) Of(Socket socket)
    {
        Span<byte> cred = stackalloc byte[12]; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        var got = socket.GetRawSocketOption(SolSocket, SoPeerCred, cred);
        if (got < 12)
        {
            throw new SocketException((int)SocketError.OperationNotSupported);
        }
        return (MemoryMarshal.Read<int>(cred), MemoryMarshal.Read<uint>(cred[4..]));
    }

    /// <summary>Null when the peer runs as this process's user, else why it is refused (naming its pid and uid).</summary>
    public static string? Refusal(Socket socket, string who)
    {
        var (pid, uid) = Of(socket);
        var me = CurrentUser;
        return uid == me ? null : $"{who} (pid {pid}) runs as uid {uid}, not as this process's uid {me}: refused";
    }
}
