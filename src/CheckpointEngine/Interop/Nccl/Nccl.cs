using System.Runtime.InteropServices;

namespace CheckpointEngine.Interop.Nccl;

/// <summary>The 128-byte id every member of a new NCCL communicator must share.</summary>
[StructLayout(LayoutKind.Sequential, Size = Size)]
public unsafe struct NcclUniqueId
{
    public const int Size = 128;
    public fixed byte Internal[Size];

    public readonly byte[] ToArray()
    {
        fixed (byte* p = Internal)
        {
            return new ReadOnlySpan<byte>(p, Size).ToArray();
        }
    }

    /// <exception cref="ArgumentException">Not exactly 128 bytes.</exception>
    public static NcclUniqueId From(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Size)
        {
            throw new ArgumentException($"an NCCL unique id is {Size} bytes, got {bytes.Length}", nameof(bytes));
        }
        var id = default(NcclUniqueId);
        bytes.CopyTo(new Span<byte>(id.Internal, Size));
        return id;
    }
}

/// <summary>
/// <c>ncclConfig_t</c> as NCCL 2.14 defined it (the first version with a config: size, magic, version,
/// blocking; 24 bytes with its tail padding). NCCL reads a config by its version field, so newer
/// libraries take this one as it is and use their defaults for every later field. The padding is
/// set to "undefined" too, since later versions put cgaClusterSize there.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public struct NcclConfig
{
    public const uint Magic = 0xcafebeef;
    public const uint Version214 = 21400;
    public const int Undefined = int.MinValue;

    public nuint StructSize;
    public uint MagicValue;
    public uint Version;
    public int Blocking;
    public int TailPadding;

    /// <summary>A non-blocking communicator: init and collectives return at once, and we poll with a deadline.</summary>
    public static NcclConfig NonBlocking() => new()
    {
        StructSize = (nuint)Marshal.SizeOf<NcclConfig>(),
        MagicValue = Magic,
        Version = Version214,
        Blocking = 0,
        TailPadding = Undefined,
    };
}

/// <summary>An NCCL call failed: the call, NCCL's result name and its last error text.</summary>
public sealed class NcclException(string call, int code, string message) : CheckpointEngineException($"{call} failed: {Nccl.ResultName(code)} ({code}): {message}")
{
    public string Call { get; } = call;

    public int Code { get; } = code;
}

/// <summary>
/// NCCL (<c>libnccl.so.2</c>), loaded on first use. Only what the communicator needs: unique ids,
/// non-blocking init, broadcast and all-reduce, point-to-point send and receive fused in groups, error polling, abort and destroy.
/// </summary>
public sealed unsafe class Nccl
{
    public const string LibraryVariable = "CKPT_ENGINE_NCCL_LIBRARY";

    public const int Success = 0;
    public const int InProgress = 7;

    /// <summary>ncclDataType_t values used here.</summary>
    public const int Uint8 = 1;
    public const int Int64 = 4;

    /// <summary>ncclRedOp_t.</summary>
    public const int Sum = 0;
    public const int Max = 2;
    public const int Min = 3;

    private static readonly string[] Results =
        ["ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError", "ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress", "ncclTimeout"];

    public static string ResultName(int code) => code >= 0 && code < Results.Length ? Results[code] : $"ncclResult({code})";

    private static readonly Lazy<Nccl> Shared = new(() => new Nccl(NativeLibraries.Load("NCCL (libnccl.so.2)", LibraryVariable, NativeLibraries.Candidates(LibraryVariable, DefaultPaths()))));

    /// <summary>Where NCCL is looked for: the loader's path, CUDA's folders, and the nvidia-nccl Python wheel (which torch installs).</summary>
    public static IReadOnlyList<string> DefaultPaths()
    {
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        string[] roots = [.. new[] { Environment.GetEnvironmentVariable("VIRTUAL_ENV"), Environment.GetEnvironmentVariable("CONDA_PREFIX") }
            .Where(p => !string.IsNullOrEmpty(p)).Select(p => Path.Combine(p!, "lib")),
            "/usr/local/lib", "/usr/lib", "/opt/conda/lib", Path.Combine(home, ".local/lib")];
        return [
            "libnccl.so.2", "/usr/lib/x86_64-linux-gnu/libnccl.so.2", "/usr/local/cuda/lib64/libnccl.so.2", "/usr/lib64/libnccl.so.2",
            .. NativeLibraries.Glob(roots, "site-packages/nvidia/nccl/lib/libnccl.so.2"),
            .. NativeLibraries.Glob(roots, "dist-packages/nvidia/nccl/lib/libnccl.so.2"),
        ];
    }

    /// <exception cref="BackendUnavailableException">No NCCL on this machine.</exception>
    public static Nccl Instance => Shared.Value;

    private readonly delegate* unmanaged<int*, int> _getVersion;
    private readonly delegate* unmanaged<NcclUniqueId*, int> _getUniqueId;
    private readonly delegate* unmanaged<nint*, int, NcclUniqueId, int, NcclConfig*, int> _commInitRankConfig;
    private readonly delegate* unmanaged<nint, int*, int> _commGetAsyncError;
    private readonly delegate* unmanaged<nint, int> _commAbort;
    private readonly delegate* unmanaged<nint, int> _commDestroy;
    private readonly delegate* unmanaged<nint, byte*> _getLastError;
    private readonly delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int> _broadcast;
    private readonly delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int> _allReduce;
    private readonly delegate* unmanaged<nint, nuint, int, int, nint, nint, int> _send;
    private readonly delegate* unmanaged<nint, nuint, int, int, nint, nint, int> _recv;
    private readonly delegate* unmanaged<int> _groupStart;
    private readonly delegate* unmanaged<int> _groupEnd;

    private Nccl(nint lib)
    {
        const string what = "NCCL (libnccl.so.2)";
        nint F(string name) => NativeLibraries.Export(lib, what, name);
        _getVersion = (delegate* unmanaged<int*, int>)F("ncclGetVersion");
        _getUniqueId = (delegate* unmanaged<NcclUniqueId*, int>)F("ncclGetUniqueId");
        _commInitRankConfig = (delegate* unmanaged<nint*, int, NcclUniqueId, int, NcclConfig*, int>)F("ncclCommInitRankConfig");
        _commGetAsyncError = (delegate* unmanaged<nint, int*, int>)F("ncclCommGetAsyncError");
        _commAbort = (delegate* unmanaged<nint, int>)F("ncclCommAbort");
        _commDestroy = (delegate* unmanaged<nint, int>)F("ncclCommDestroy");
        _getLastError = (delegate* unmanaged<nint, byte*>)F("ncclGetLastError");
        _broadcast = (delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)F("ncclBroadcast");
        _allReduce = (delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)F("ncclAllReduce");
        _send = (delegate* unmanaged<nint, nuint, int, int, nint, nint, int>)F("ncclSend");
        _recv = (delegate* unmanaged<nint, nuint, int, int, nint, nint, int>)F("ncclRecv");
        _groupStart = (delegate* unmanaged<int>)F("ncclGroupStart");
        _groupEnd = (delegate* unmanaged<int>)F("ncclGroupEnd");
        int version;
        Check(_getVersion(&version), "ncclGetVersion", 0);
        Version = version;
    }

    /// <summary>NCCL_VERSION_CODE of the loaded library (e.g. 22703 for 2.27.3).</summary>
    public int Version { get; }

    /// <summary>Throws for anything but success and in-progress (which non-blocking calls return while they run).</summary>
    public int Check(int code, string call, nint comm)
    {
        if (code is Success or InProgress)
        {
            return code;
        }
        var text = _getLastError(comm);
        throw new NcclException(call, code, text is null ? "" : Marshal.PtrToStringUTF8((nint)text) ?? "");
    }

    public NcclUniqueId UniqueId()
    {
        NcclUniqueId id;
        Check(_getUniqueId(&id), "ncclGetUniqueId", 0);
        return id;
    }

    /// <summary>Starts a non-blocking init; poll <see cref="AsyncError"/> until it is no longer in progress.</summary>
    public nint StartInit(int size, NcclUniqueId id, int rank)
    {
        nint comm;
        var config = NcclConfig.NonBlocking();
        Check(_commInitRankConfig(&comm, size, id, rank, &config), $"ncclCommInitRankConfig(rank {rank} of {size})", 0);
        return comm;
    }

    /// <summary>The communicator's state: success, in progress, or the error of an operation.</summary>
    public int AsyncError(nint comm)
    {
        int state;
        Check(_commGetAsyncError(comm, &state), "ncclCommGetAsyncError", comm);
        return state;
    }

    public int Broadcast(nint buffer, long bytes, int root, nint comm, nint stream) =>
        Check(_broadcast(buffer, buffer, (nuint)bytes, Uint8, root, comm, stream), "ncclBroadcast", comm);

    public int AllReduce(nint buffer, long count, int dtype, int op, nint comm, nint stream) =>
        Check(_allReduce(buffer, buffer, (nuint)count, dtype, op, comm, stream), "ncclAllReduce", comm);

    /// <summary>ncclSend(sendbuff, count, datatype, peer, comm, stream): <paramref name="peer"/> must receive as many bytes (NCCL 2.7 and later).</summary>
    public int Send(nint buffer, long bytes, int peer, nint comm, nint stream) =>
        Check(_send(buffer, (nuint)bytes, Uint8, peer, comm, stream), $"ncclSend({bytes} bytes to rank {peer})", comm);

    /// <summary>ncclRecv(recvbuff, count, datatype, peer, comm, stream): <paramref name="peer"/> must send as many bytes.</summary>
    public int Receive(nint buffer, long bytes, int peer, nint comm, nint stream) =>
        Check(_recv(buffer, (nuint)bytes, Uint8, peer, comm, stream), $"ncclRecv({bytes} bytes from rank {peer})", comm);

    /// <summary>
    /// Opens a group on this thread (groups are per thread): the sends and receives until <see cref="GroupEnd"/> are issued together, so
    /// a rank that sends and receives in one group cannot deadlock.
    /// </summary>
    public void GroupStart() => Check(_groupStart(), "ncclGroupStart", 0);

    /// <summary>Issues the group's operations; on a non-blocking communicator it returns in progress, and <see cref="AsyncError"/> is polled until it is not.</summary>
    public int GroupEnd(nint comm) => Check(_groupEnd(), "ncclGroupEnd", comm);

    /// <summary>Stops every operation of the communicator and frees it (safe while a peer is gone).</summary>
    public void Abort(nint comm) => _ = _commAbort(comm);

    public void Destroy(nint comm) => Check(_commDestroy(comm), "ncclCommDestroy", comm);
}
