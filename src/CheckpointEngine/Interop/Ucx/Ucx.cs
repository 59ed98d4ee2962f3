using System.Runtime.InteropServices;
using ucp_context_h = nint;
using ucp_worker_h = nint;
using ucp_ep_h = nint;
using ucp_mem_h = nint;
using ucp_rkey_h = nint;
using ucp_config_t = nint;
using ucs_status_ptr_t = nint;

namespace CheckpointEngine.Interop.Ucx;

/// <summary>A UCX call failed: the call and UCX's status name.</summary>
public sealed class UcxException(string call, int status, string text) : CheckpointEngineException($"{call} failed: {text} ({status})")
{
    public string Call { get; } = call;

    public int Status { get; } = status;
}

/// <summary><c>ucp_params_t</c> of UCX 1.13 (80 bytes); only the fields set here.</summary>
[StructLayout(LayoutKind.Explicit, Size = 80)]
internal struct UcpParams
{
    [FieldOffset(0)] public ulong FieldMask;
    [FieldOffset(8)] public ulong Features;
    [FieldOffset(72)] public nint Name;
}

/// <summary><c>ucp_worker_params_t</c> of UCX 1.13 (200 bytes); only the thread mode is set.</summary>
[StructLayout(LayoutKind.Explicit, Size = 200)]
internal struct UcpWorkerParams
{
    [FieldOffset(0)] public ulong FieldMask;
    [FieldOffset(8)] public int ThreadMode;
}

/// <summary><c>ucp_ep_params_t</c> of UCX 1.13 (104 bytes): a remote worker address, the error mode and the error handler.</summary>
[StructLayout(LayoutKind.Explicit, Size = 104)]
internal unsafe struct UcpEpParams
{
    [FieldOffset(0)] public ulong FieldMask;
    [FieldOffset(8)] public nint Address;
    [FieldOffset(16)] public int ErrMode;
    [FieldOffset(24)] public delegate* unmanaged<nint, nint, int, void> ErrHandler;
    [FieldOffset(32)] public nint ErrHandlerArg;
}

/// <summary><c>ucp_mem_map_params_t</c> of UCX 1.13 (40 bytes): map memory that exists already.</summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal struct UcpMemMapParams
{
    [FieldOffset(0)] public ulong FieldMask;
    [FieldOffset(8)] public nint Address;
    [FieldOffset(16)] public nuint Length;
    [FieldOffset(24)] public uint Flags;
}

/// <summary><c>ucp_request_param_t</c> of UCX 1.13 (72 bytes): only the operation flags are set (no callbacks: requests are polled).</summary>
[StructLayout(LayoutKind.Explicit, Size = 72)]
internal struct UcpRequestParam
{
    [FieldOffset(0)] public uint OpAttrMask;
    [FieldOffset(4)] public uint Flags;
}

/// <summary>
/// UCX's UCP API (<c>libucp.so.0</c>, UCX 1.13 and later), loaded on first use: a context for one-sided
/// reads, one worker, endpoints from worker addresses, memory mapping and remote keys, non-blocking gets
/// that are polled, and the wake-up file descriptor. Structures are laid out as the 1.13 headers do
/// (checked with the C compiler against <c>ucp.h</c>); UCX keeps them ABI-compatible across 1.x.
/// </summary>
internal sealed unsafe class Ucx
{
    public const string LibraryVariable = "CKPT_ENGINE_UCX_LIBRARY";
    private const string What = "UCX (libucp.so.0)";

    public const uint ApiMajor = 1;
    public const uint ApiMinor = 13;

    public const int Ok = 0;
    public const int InProgress = 1;
    public const int ErrUnreachable = -6;
    public const int ErrBusy = -15;
    private const int ErrLast = -100;

    public const ulong ParamFieldFeatures = 1;
    public const ulong ParamFieldName = 256;
    public const ulong FeatureRma = 2;
    public const ulong FeatureWakeup = 16;
    public const ulong WorkerParamFieldThreadMode = 1;
    public const int ThreadModeSingle = 0;
    public const ulong EpParamFieldRemoteAddress = 1;
    public const ulong EpParamFieldErrHandlingMode = 2;
    public const ulong EpParamFieldErrHandler = 4;
    public const int ErrHandlingModePeer = 1;
    public const ulong MemMapParamFieldAddress = 1;
    public const ulong MemMapParamFieldLength = 2;
    public const uint OpAttrFieldFlags = 16;
    public const uint EpCloseFlagForce = 1;

    public static readonly IReadOnlyList<string> DefaultPaths =
        ["libucp.so.0", "/usr/lib/x86_64-linux-gnu/libucp.so.0", "/usr/lib/aarch64-linux-gnu/libucp.so.0", "/usr/local/lib/libucp.so.0", "/usr/lib64/libucp.so.0", "/opt/ucx/lib/libucp.so.0"];

    private static readonly Lazy<Ucx> Shared = new(() => new Ucx(NativeLibraries.Load(What, LibraryVariable, NativeLibraries.Candidates(LibraryVariable, DefaultPaths),
        "install UCX (Debian/Ubuntu: apt-get install libucx0), or use the tcp P2P transport (--p2p-transport tcp)")));

    /// <exception cref="BackendUnavailableException">No UCX on this machine.</exception>
    public static Ucx Instance => Shared.Value;

    /// <summary>Whether UCX loads here (for <c>auto</c>); the reason when not.</summary>
    public static bool TryLoad(out string? why)
    {
        try
        {
            _ = Instance;
            why = null;
            return true;
        }
        catch (BackendUnavailableException e)
        {
            why = e.Message;
            return false;
        }
    }

    private readonly delegate* unmanaged<uint*, uint*, uint*, void> _getVersion;
    private readonly delegate* unmanaged<byte*, byte*, ucp_config_t*, int> _configRead;
    private readonly delegate* unmanaged<ucp_config_t, byte*, byte*, int> _configModify;
    private readonly delegate* unmanaged<ucp_config_t, void> _configRelease;
    private readonly delegate* unmanaged<uint, uint, UcpParams*, ucp_config_t, ucp_context_h*, int> _initVersion;
    private readonly delegate* unmanaged<ucp_context_h, void> _cleanup;
    private readonly delegate* unmanaged<ucp_context_h, UcpWorkerParams*, ucp_worker_h*, int> _workerCreate;
    private readonly delegate* unmanaged<ucp_worker_h, void> _workerDestroy;
    private readonly delegate* unmanaged<ucp_worker_h, nint*, nuint*, int> _workerGetAddress;
    private readonly delegate* unmanaged<ucp_worker_h, nint, void> _workerReleaseAddress;
    private readonly delegate* unmanaged<ucp_worker_h, uint> _workerProgress;
    private readonly delegate* unmanaged<ucp_worker_h, int*, int> _workerGetEfd;
    private readonly delegate* unmanaged<ucp_worker_h, int> _workerArm;
    private readonly delegate* unmanaged<ucp_worker_h, int> _workerSignal;
    private readonly delegate* unmanaged<ucp_worker_h, UcpEpParams*, ucp_ep_h*, int> _epCreate;
    private readonly delegate* unmanaged<ucp_ep_h, UcpRequestParam*, ucs_status_ptr_t> _epCloseNbx;
    private readonly delegate* unmanaged<ucp_context_h, UcpMemMapParams*, ucp_mem_h*, int> _memMap;
    private readonly delegate* unmanaged<ucp_context_h, ucp_mem_h, int> _memUnmap;
    private readonly delegate* unmanaged<ucp_context_h, ucp_mem_h, nint*, nuint*, int> _rkeyPack;
    private readonly delegate* unmanaged<nint, void> _rkeyBufferRelease;
    private readonly delegate* unmanaged<ucp_ep_h, void*, ucp_rkey_h*, int> _epRkeyUnpack;
    private readonly delegate* unmanaged<ucp_rkey_h, void> _rkeyDestroy;
    private readonly delegate* unmanaged<ucp_ep_h, nint, nuint, ulong, ucp_rkey_h, UcpRequestParam*, ucs_status_ptr_t> _getNbx;
    private readonly delegate* unmanaged<nint, int> _requestCheckStatus;
    private readonly delegate* unmanaged<nint, void> _requestFree;
    private readonly delegate* unmanaged<ucp_worker_h, nint, void> _requestCancel;
    private readonly delegate* unmanaged<int, byte*> _statusString;

    private Ucx(nint lib)
    {
        nint F(string name) => NativeLibraries.Export(lib, What, name);
        _getVersion = (delegate* unmanaged<uint*, uint*, uint*, void>)F("ucp_get_version");
        _configRead = (delegate* unmanaged<byte*, byte*, ucp_config_t*, int>)F("ucp_config_read");
        _configModify = (delegate* unmanaged<ucp_config_t, byte*, byte*, int>)F("ucp_config_modify");
        _configRelease = (delegate* unmanaged<ucp_config_t, void>)F("ucp_config_release");
        _initVersion = (delegate* unmanaged<uint, uint, UcpParams*, ucp_config_t, ucp_context_h*, int>)F("ucp_init_version");
        _cleanup = (delegate* unmanaged<ucp_context_h, void>)F("ucp_cleanup");
        _workerCreate = (delegate* unmanaged<ucp_context_h, UcpWorkerParams*, ucp_worker_h*, int>)F("ucp_worker_create");
        _workerDestroy = (delegate* unmanaged<ucp_worker_h, void>)F("ucp_worker_destroy");
        _workerGetAddress = (delegate* unmanaged<ucp_worker_h, nint*, nuint*, int>)F("ucp_worker_get_address");
        _workerReleaseAddress = (delegate* unmanaged<ucp_worker_h, nint, void>)F("ucp_worker_release_address");
        _workerProgress = (delegate* unmanaged<ucp_worker_h, uint>)F("ucp_worker_progress");
        _workerGetEfd = (delegate* unmanaged<ucp_worker_h, int*, int>)F("ucp_worker_get_efd");
        _workerArm = (delegate* unmanaged<ucp_worker_h, int>)F("ucp_worker_arm");
        _workerSignal = (delegate* unmanaged<ucp_worker_h, int>)F("ucp_worker_signal");
        _epCreate = (delegate* unmanaged<ucp_worker_h, UcpEpParams*, ucp_ep_h*, int>)F("ucp_ep_create");
        _epCloseNbx = (delegate* unmanaged<ucp_ep_h, UcpRequestParam*, ucs_status_ptr_t>)F("ucp_ep_close_nbx");
        _memMap = (delegate* unmanaged<ucp_context_h, UcpMemMapParams*, ucp_mem_h*, int>)F("ucp_mem_map");
        _memUnmap = (delegate* unmanaged<ucp_context_h, ucp_mem_h, int>)F("ucp_mem_unmap");
        _rkeyPack = (delegate* unmanaged<ucp_context_h, ucp_mem_h, nint*, nuint*, int>)F("ucp_rkey_pack");
        _rkeyBufferRelease = (delegate* unmanaged<nint, void>)F("ucp_rkey_buffer_release");
        _epRkeyUnpack = (delegate* unmanaged<ucp_ep_h, void*, ucp_rkey_h*, int>)F("ucp_ep_rkey_unpack");
        _rkeyDestroy = (delegate* unmanaged<ucp_rkey_h, void>)F("ucp_rkey_destroy");
        _getNbx = (delegate* unmanaged<ucp_ep_h, nint, nuint, ulong, ucp_rkey_h, UcpRequestParam*, ucs_status_ptr_t>)F("ucp_get_nbx");
        _requestCheckStatus = (delegate* unmanaged<nint, int>)F("ucp_request_check_status");
        _requestFree = (delegate* unmanaged<nint, void>)F("ucp_request_free");
        _requestCancel = (delegate* unmanaged<ucp_worker_h, nint, void>)F("ucp_request_cancel");
        _statusString = (delegate* unmanaged<int, byte*>)F("ucs_status_string"); // libucs, found through libucp's dependencies.
        uint major, minor, release;
        _getVersion(&major, &minor, &release);
        Version = new Version((int)major, (int)minor, (int)release);
        if (major != ApiMajor || minor < ApiMinor)
        {
            throw new BackendUnavailableException($"{What} is version {Version}; the UCX P2P transport needs 1.13 or later (1.x)");
        }
    }

    public Version Version { get; }

    public string StatusName(int status) => Marshal.PtrToStringUTF8((nint)_statusString(status)) ?? $"ucs_status {status}";

    public void Check(int status, string call)
    {
        if (status != Ok)
        {
            throw new UcxException(call, status, StatusName(status));
        }
    }

    /// <summary>UCX's configuration from its <c>UCX_*</c> environment, with <paramref name="settings"/> on top (e.g. NET_DEVICES).</summary>
    public ucp_config_t ReadConfig(IEnumerable<KeyValuePair<string, string>> settings)
    {
        ucp_config_t config;
        Check(_configRead(null, null, &config), "ucp_config_read");
        try
        {
            foreach (var (name, value) in settings)
            {
                var n = Utf8(name);
                var v = Utf8(value);
                fixed (byte* pn = n, pv = v)
                {
                    Check(_configModify(config, pn, pv), $"ucp_config_modify({name}={value})");
                }
            }
        }
        catch
        {
            _configRelease(config);
            throw;
        }
        return config;
    }

    public void ReleaseConfig(ucp_config_t config) => _configRelease(config);

    public ucp_context_h Init(ucp_config_t config, ulong features, byte* name)
    {
        var p = new UcpParams { FieldMask = ParamFieldFeatures | ParamFieldName, Features = features, Name = (nint)name };
        ucp_context_h context;
        Check(_initVersion(ApiMajor, ApiMinor, &p, config, &context), "ucp_init");
        return context;
    }

    public void Cleanup(ucp_context_h context) => _cleanup(context);

    public ucp_worker_h CreateWorker(ucp_context_h context)
    {
        var p = new UcpWorkerParams { FieldMask = WorkerParamFieldThreadMode, ThreadMode = ThreadModeSingle };
        ucp_worker_h worker;
        Check(_workerCreate(context, &p, &worker), "ucp_worker_create");
        return worker;
    }

    public void DestroyWorker(ucp_worker_h worker) => _workerDestroy(worker);

    public byte[] WorkerAddress(ucp_worker_h worker)
    {
        nint address;
        nuint length;
        Check(_workerGetAddress(worker, &address, &length), "ucp_worker_get_address");
        try
        {
            return new ReadOnlySpan<byte>((void*)address, checked((int)length)).ToArray();
        }
        finally
        {
            _workerReleaseAddress(worker, address);
        }
    }

    public uint Progress(ucp_worker_h worker) => _workerProgress(worker);

    public int EventFd(ucp_worker_h worker)
    {
        int fd;
        Check(_workerGetEfd(worker, &fd), "ucp_worker_get_efd");
        return fd;
    }

    /// <summary>Arms the wake-up descriptor: true when armed (safe to sleep on it), false when events are pending.</summary>
    public bool Arm(ucp_worker_h worker)
    {
        var status = _workerArm(worker);
        if (status == ErrBusy)
        {
            return false;
        }
        Check(status, "ucp_worker_arm");
        return true;
    }

    /// <summary>Wakes the worker's sleeper; any thread may call it.</summary>
    public void Signal(ucp_worker_h worker) => _ = _workerSignal(worker);

    /// <summary>
    /// An endpoint to the worker at <paramref name="address"/>. With <paramref name="onError"/>, where the
    /// transports can (RDMA, TCP), a failed peer fails its requests and UCX calls <paramref name="onError"/>
    /// (<c>arg</c>, the endpoint, the status) from progress, after which the endpoint must be closed; UCX 1.13's
    /// shared-memory transports cannot (UCX logs that, and the endpoint is made without), so callers
    /// watch the owner through its control connection as well.
    /// </summary>
    public ucp_ep_h Connect(ucp_worker_h worker, ReadOnlySpan<byte> address, delegate* unmanaged<nint, ucp_ep_h, int, void> onError, nint arg)
    {
        fixed (byte* a = address)
        {
            var peerErrors = onError != null;
            var p = new UcpEpParams
            {
                FieldMask = EpParamFieldRemoteAddress | (peerErrors ? EpParamFieldErrHandlingMode | EpParamFieldErrHandler : 0),
                Address = (nint)a,
                ErrMode = ErrHandlingModePeer,
                ErrHandler = onError,
                ErrHandlerArg = arg,
            };
            ucp_ep_h ep;
            var status = _epCreate(worker, &p, &ep);
            if (status == ErrUnreachable && peerErrors)
            {
                p.FieldMask = EpParamFieldRemoteAddress;
                status = _epCreate(worker, &p, &ep);
            }
            Check(status, "ucp_ep_create");
            return ep;
        }
    }

    /// <summary>Starts closing <paramref name="ep"/> at once (outstanding requests fail); returns the request to poll, or 0 when done.</summary>
    public nint CloseForce(ucp_ep_h ep)
    {
        var p = new UcpRequestParam { OpAttrMask = OpAttrFieldFlags, Flags = EpCloseFlagForce };
        var r = _epCloseNbx(ep, &p);
        return IsRequest(r) ? r : 0;
    }

    public ucp_mem_h Map(ucp_context_h context, nint address, long length)
    {
        var p = new UcpMemMapParams { FieldMask = MemMapParamFieldAddress | MemMapParamFieldLength, Address = address, Length = (nuint)length };
        ucp_mem_h memh;
        Check(_memMap(context, &p, &memh), $"ucp_mem_map({length} bytes)");
        return memh;
    }

    public void Unmap(ucp_context_h context, ucp_mem_h memh) => Check(_memUnmap(context, memh), "ucp_mem_unmap");

    public int TryUnmap(ucp_context_h context, ucp_mem_h memh) => _memUnmap(context, memh);

    public byte[] PackRkey(ucp_context_h context, ucp_mem_h memh)
    {
        nint buffer;
        nuint length;
        Check(_rkeyPack(context, memh, &buffer, &length), "ucp_rkey_pack");
        try
        {
            return new ReadOnlySpan<byte>((void*)buffer, checked((int)length)).ToArray();
        }
        finally
        {
            _rkeyBufferRelease(buffer);
        }
    }

    public ucp_rkey_h UnpackRkey(ucp_ep_h ep, ReadOnlySpan<byte> packed)
    {
        fixed (byte* p = packed)
        {
            ucp_rkey_h rkey;
            Check(_epRkeyUnpack(ep, p, &rkey), "ucp_ep_rkey_unpack");
            return rkey;
        }
    }

    public void DestroyRkey(ucp_rkey_h rkey) => _rkeyDestroy(rkey);

    /// <summary>Starts a get: 0 when it completed at once, else the request to poll; throws when it failed at once.</summary>
    public nint Get(ucp_ep_h ep, nint buffer, long length, ulong remote, ucp_rkey_h rkey)
    {
        var p = default(UcpRequestParam);
        var r = _getNbx(ep, buffer, (nuint)length, remote, rkey, &p);
        if (IsError(r))
        {
            throw new UcxException("ucp_get_nbx", (int)r, StatusName((int)r));
        }
        return r;
    }

    /// <summary>A request's status: <see cref="InProgress"/>, <see cref="Ok"/>, or an error.</summary>
    public int Status(nint request) => _requestCheckStatus(request);

    public void Free(nint request) => _requestFree(request);

    /// <summary>Asks UCX to cancel <paramref name="request"/>; it still completes (canceled or done) through progress and must then be freed.</summary>
    public void Cancel(ucp_worker_h worker, nint request) => _requestCancel(worker, request);

    private static bool IsError(nint r) => (nuint)r >= unchecked((nuint)(nint)ErrLast);

    private static bool IsRequest(nint r) => r != 0 && !IsError(r);

    private static byte[] Utf8(string s) => [.. System.Text.Encoding.UTF8.GetBytes(s), 0];
}
