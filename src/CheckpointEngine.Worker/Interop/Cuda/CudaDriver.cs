using System.Runtime.InteropServices;

namespace CheckpointEngine.Interop.Cuda;

/// <summary>The 64-byte opaque handle <c>cuIpcGetMemHandle</c> gives and <c>cuIpcOpenMemHandle</c> takes.</summary>
[StructLayout(LayoutKind.Sequential, Size = Size)]
public unsafe struct CuIpcMemHandle
{
    public const int Size = 64;
    public fixed byte Reserved[Size];

    public readonly string ToBase64()
    {
        fixed (byte* p = Reserved)
        {
            return Convert.ToBase64String(new ReadOnlySpan<byte>(p, Size));
        }
    }

    /// <exception cref="FormatException">Not base64 of exactly 64 bytes.</exception>
    public static CuIpcMemHandle FromBase64(string text)
    {
        var bytes = new byte[Size + 3];
        if (!Convert.TryFromBase64String(text, bytes, out var written) || written != Size)
        {
            throw new FormatException($"'{(text.Length > 40 ? text[..40] + "..." : text)}' is not a base64 CUDA IPC handle of {Size} bytes");
        }
        var handle = default(CuIpcMemHandle);
        bytes.AsSpan(0, Size).CopyTo(new Span<byte>(handle.Reserved, Size));
        return handle;
    }
}

/// <summary>
/// The CUDA driver API (<c>libcuda.so.1</c>), loaded on first use: no CUDA toolkit is needed to build
/// or run the host backend. Only the calls the CUDA backend and the worker library make; every one
/// goes through <see cref="Check"/>, which turns an error code into a <see cref="CudaException"/>.
/// </summary>
public sealed unsafe class CudaDriver
{
    public const string LibraryVariable = "CKPT_ENGINE_CUDA_LIBRARY";

    public const int Success = 0;
    public const int ErrorNoDevice = 100;
    public const int ErrorNotReady = 600;
    public const int ErrorHostMemoryAlreadyRegistered = 712;
    public const int ErrorHostMemoryNotRegistered = 713;

    public const uint StreamNonBlocking = 1;
    public const uint EventDisableTiming = 2;
    public const uint MemHostRegisterPortable = 1;
    public const uint MemHostRegisterReadOnly = 8;
    public const uint IpcMemLazyEnablePeerAccess = 1;

    /// <summary>Where the driver is looked for when <see cref="LibraryVariable"/> is not set.</summary>
    public static readonly IReadOnlyList<string> DefaultPaths =
    [
        "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/wsl/lib/libcuda.so.1",
    ];

    private static readonly Lazy<CudaDriver> Shared = new(() => new CudaDriver(NativeLibraries.Load(
        "The CUDA driver (libcuda.so.1)", LibraryVariable, NativeLibraries.Candidates(LibraryVariable, DefaultPaths))));

    /// <summary>The driver, loaded and initialised (cuInit) once per process.</summary>
    /// <exception cref="BackendUnavailableException">No driver on this machine.</exception>
    public static CudaDriver Instance => Shared.Value;

    /// <summary>True when a driver loads and reports at least one device (never throws).</summary>
    public static bool HasDevice()
    {
        try
        {
            return Instance.DeviceCount() > 0;
        }
        catch (Exception e) when (e is BackendUnavailableException or CudaException)
        {
            return false;
        }
    }

    private readonly delegate* unmanaged<int, byte**, int> _getErrorName;
    private readonly delegate* unmanaged<int, byte**, int> _getErrorString;
    private readonly delegate* unmanaged<uint, int> _init;
    private readonly delegate* unmanaged<int*, int> _deviceGetCount;
    private readonly delegate* unmanaged<int*, int, int> _deviceGet;
    private readonly delegate* unmanaged<Guid*, int, int> _deviceGetUuid;
    private readonly delegate* unmanaged<nint*, int, int> _primaryCtxRetain;
    private readonly delegate* unmanaged<int, int> _primaryCtxRelease;
    private readonly delegate* unmanaged<nint, int> _ctxSetCurrent;
    private readonly delegate* unmanaged<nuint*, nuint*, int> _memGetInfo;
    private readonly delegate* unmanaged<ulong*, nuint, int> _memAlloc;
    private readonly delegate* unmanaged<ulong, int> _memFree;
    private readonly delegate* unmanaged<nint, nuint, uint, int> _memHostRegister;
    private readonly delegate* unmanaged<nint, int> _memHostUnregister;
    private readonly delegate* unmanaged<ulong, nint, nuint, int> _memcpyHtoD;
    private readonly delegate* unmanaged<ulong, nint, nuint, nint, int> _memcpyHtoDAsync;
    private readonly delegate* unmanaged<nint, ulong, nuint, int> _memcpyDtoH;
    private readonly delegate* unmanaged<ulong, ulong, nuint, nint, int> _memcpyDtoDAsync;
    private readonly delegate* unmanaged<CudaMemcpy2D*, nint, int> _memcpy2DAsync;
    private readonly delegate* unmanaged<nint*, uint, int> _streamCreate;
    private readonly delegate* unmanaged<nint, int> _streamDestroy;
    private readonly delegate* unmanaged<nint, int> _streamSynchronize;
    private readonly delegate* unmanaged<nint*, uint, int> _eventCreate;
    private readonly delegate* unmanaged<nint, int> _eventDestroy;
    private readonly delegate* unmanaged<nint, nint, int> _eventRecord;
    private readonly delegate* unmanaged<nint, int> _eventQuery;
    private readonly delegate* unmanaged<nint, int> _eventSynchronize;
    private readonly delegate* unmanaged<CuIpcMemHandle*, ulong, int> _ipcGetMemHandle;
    private readonly delegate* unmanaged<ulong*, CuIpcMemHandle, uint, int> _ipcOpenMemHandle;
    private readonly delegate* unmanaged<ulong, int> _ipcCloseMemHandle;
    private readonly delegate* unmanaged<ulong*, nuint*, ulong, int> _memGetAddressRange;

    private CudaDriver(nint lib)
    {
        const string what = "The CUDA driver (libcuda.so.1)";
        nint F(params string[] names) => NativeLibraries.Export(lib, what, names);
        _getErrorName = (delegate* unmanaged<int, byte**, int>)F("cuGetErrorName");
        _getErrorString = (delegate* unmanaged<int, byte**, int>)F("cuGetErrorString");
        _init = (delegate* unmanaged<uint, int>)F("cuInit");
        _deviceGetCount = (delegate* unmanaged<int*, int>)F("cuDeviceGetCount");
        _deviceGet = (delegate* unmanaged<int*, int, int>)F("cuDeviceGet");
        _deviceGetUuid = (delegate* unmanaged<Guid*, int, int>)F("cuDeviceGetUuid_v2", "cuDeviceGetUuid");
        _primaryCtxRetain = (delegate* unmanaged<nint*, int, int>)F("cuDevicePrimaryCtxRetain");
        _primaryCtxRelease = (delegate* unmanaged<int, int>)F("cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease");
        _ctxSetCurrent = (delegate* unmanaged<nint, int>)F("cuCtxSetCurrent");
        _memGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)F("cuMemGetInfo_v2");
        _memAlloc = (delegate* unmanaged<ulong*, nuint, int>)F("cuMemAlloc_v2");
        _memFree = (delegate* unmanaged<ulong, int>)F("cuMemFree_v2");
        _memHostRegister = (delegate* unmanaged<nint, nuint, uint, int>)F("cuMemHostRegister_v2");
        _memHostUnregister = (delegate* unmanaged<nint, int>)F("cuMemHostUnregister");
        _memcpyHtoD = (delegate* unmanaged<ulong, nint, nuint, int>)F("cuMemcpyHtoD_v2");
        _memcpyHtoDAsync = (delegate* unmanaged<ulong, nint, nuint, nint, int>)F("cuMemcpyHtoDAsync_v2");
        _memcpyDtoH = (delegate* unmanaged<nint, ulong, nuint, int>)F("cuMemcpyDtoH_v2");
        _memcpyDtoDAsync = (delegate* unmanaged<ulong, ulong, nuint, nint, int>)F("cuMemcpyDtoDAsync_v2");
        _memcpy2DAsync = (delegate* unmanaged<CudaMemcpy2D*, nint, int>)F("cuMemcpy2DAsync_v2");
        _streamCreate = (delegate* unmanaged<nint*, uint, int>)F("cuStreamCreate");
        _streamDestroy = (delegate* unmanaged<nint, int>)F("cuStreamDestroy_v2");
        _streamSynchronize = (delegate* unmanaged<nint, int>)F("cuStreamSynchronize");
        _eventCreate = (delegate* unmanaged<nint*, uint, int>)F("cuEventCreate");
        _eventDestroy = (delegate* unmanaged<nint, int>)F("cuEventDestroy_v2");
        _eventRecord = (delegate* unmanaged<nint, nint, int>)F("cuEventRecord");
        _eventQuery = (delegate* unmanaged<nint, int>)F("cuEventQuery");
        _eventSynchronize = (delegate* unmanaged<nint, int>)F("cuEventSynchronize");
        _ipcGetMemHandle = (delegate* unmanaged<CuIpcMemHandle*, ulong, int>)F("cuIpcGetMemHandle");
        _ipcOpenMemHandle = (delegate* unmanaged<ulong*, CuIpcMemHandle, uint, int>)F("cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle");
        _ipcCloseMemHandle = (delegate* unmanaged<ulong, int>)F("cuIpcCloseMemHandle");
        _memGetAddressRange = (delegate* unmanaged<ulong*, nuint*, ulong, int>)F("cuMemGetAddressRange_v2");
        Check(_init(0), "cuInit");
    }

    /// <summary>Throws <see cref="CudaException"/> for any code but success, with the driver's name and text for it.</summary>
    public void Check(int code, string call)
    {
        if (code != Success)
        {
            throw Error(code, call);
        }
    }

    public CudaException Error(int code, string call)
    {
        byte* name = null, text = null;
        var knownName = _getErrorName(code, &name) == Success && name is not null;
        var knownText = _getErrorString(code, &text) == Success && text is not null;
        return Describe(call, code, knownName ? Marshal.PtrToStringUTF8((nint)name) : null, knownText ? Marshal.PtrToStringUTF8((nint)text) : null);
    }

    /// <summary>The exception for a code, given what the driver says about it (null when it does not know the code).</summary>
    internal static CudaException Describe(string call, int code, string? name, string? text) =>
        new(call, code, name ?? $"CUDA_ERROR_{code}", text ?? "unknown error code (a driver older than this code?)");

    public int DeviceCount()
    {
        int n;
        Check(_deviceGetCount(&n), "cuDeviceGetCount");
        return n;
    }

    public int Device(int ordinal)
    {
        int d;
        Check(_deviceGet(&d, ordinal), $"cuDeviceGet({ordinal})");
        return d;
    }

    /// <summary>The device's UUID as nvidia-smi and vLLM write it: "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".</summary>
    public string DeviceUuid(int device)
    {
        Span<byte> raw = stackalloc byte[16];
        fixed (byte* p = raw)
        {
            Check(_deviceGetUuid((Guid*)p, device), "cuDeviceGetUuid");
        }
        return FormatUuid(raw);
    }

    /// <summary>"GPU-" and the 16 bytes in order as 8-4-4-4-12 hex digits (byte order as stored, unlike <see cref="Guid"/>'s text).</summary>
    public static string FormatUuid(ReadOnlySpan<byte> raw)
    {
        var hex = Convert.ToHexStringLower(raw);
        return $"GPU-{hex[..8]}-{hex[8..12]}-{hex[12..16]}-{hex[16..20]}-{hex[20..]}";
    }

    /// <summary>Retains the device's primary context (the one torch and vLLM use) and makes it current on this thread.</summary>
    public nint RetainPrimaryContext(int device)
    {
        nint ctx;
        Check(_primaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain");
        SetCurrent(ctx);
        return ctx;
    }

    public void ReleasePrimaryContext(int device) => Check(_primaryCtxRelease(device), "cuDevicePrimaryCtxRelease");

    /// <summary>CUDA contexts are current per thread; every call that may run on a pool thread sets it first.</summary>
    public void SetCurrent(nint context) => Check(_ctxSetCurrent(context), "cuCtxSetCurrent");

    public (long Free, long Total) MemoryInfo()
    {
        nuint free, total;
        Check(_memGetInfo(&free, &total), "cuMemGetInfo");
        return ((long)free, (long)total);
    }

    public ulong Allocate(long bytes)
    {
        ulong p;
        Check(_memAlloc(&p, (nuint)bytes), $"cuMemAlloc({bytes} bytes)");
        return p;
    }

    public void Free(ulong pointer) => Check(_memFree(pointer), "cuMemFree");

    /// <summary>
    /// Page-locks host memory for fast, asynchronous copies (read-only mappings, such as checkpoint files
    /// used in place, are locked read-only). Returns false when it was registered already (not an error).
    /// </summary>
    public bool HostRegister(nint pointer, long bytes)
    {
        var code = _memHostRegister(pointer, (nuint)bytes, MemHostRegisterPortable);
        if (code is not (Success or ErrorHostMemoryAlreadyRegistered))
        {
            var readOnly = _memHostRegister(pointer, (nuint)bytes, MemHostRegisterPortable | MemHostRegisterReadOnly);
            code = readOnly is Success or ErrorHostMemoryAlreadyRegistered ? readOnly : code;
        }
        if (code == ErrorHostMemoryAlreadyRegistered)
        {
            return false;
        }
        Check(code, $"cuMemHostRegister({bytes} bytes)");
        return true;
    }

    /// <summary>Undoes <see cref="HostRegister"/>; memory that was not registered is not an error.</summary>
    public void HostUnregister(nint pointer)
    {
        var code = _memHostUnregister(pointer);
        if (code != ErrorHostMemoryNotRegistered)
        {
            Check(code, "cuMemHostUnregister");
        }
    }

    public void CopyHostToDevice(ulong destination, nint source, long bytes) => Check(_memcpyHtoD(destination, source, (nuint)bytes), "cuMemcpyHtoD");

    public void CopyHostToDeviceAsync(ulong destination, nint source, long bytes, nint stream) =>
        Check(_memcpyHtoDAsync(destination, source, (nuint)bytes, stream), "cuMemcpyHtoDAsync");

    public void CopyDeviceToHost(nint destination, ulong source, long bytes) => Check(_memcpyDtoH(destination, source, (nuint)bytes), "cuMemcpyDtoH");

    /// <summary>Queues a device-to-device copy on <paramref name="stream"/> (the ranges must not overlap).</summary>
    public void CopyDeviceToDeviceAsync(ulong destination, ulong source, long bytes, nint stream) =>
        Check(_memcpyDtoDAsync(destination, source, (nuint)bytes, stream), "cuMemcpyDtoDAsync");

    /// <summary>
    /// Queues a strided device-to-device copy: <paramref name="rows"/> rows of <paramref name="width"/> bytes, <paramref name="sourcePitch"/>
    /// apart at the source and <paramref name="destinationPitch"/> apart at the destination (e.g. a column slice of a row-major matrix).
    /// Returns the driver's error code instead of throwing: the caller falls back to row-by-row copies where the driver refuses the pitches.
    /// </summary>
    public int TryCopy2DDeviceToDeviceAsync(ulong destination, long destinationPitch, ulong source, long sourcePitch, long width, long rows, nint stream)
    {
        var copy = new CudaMemcpy2D
        {
            SrcMemoryType = MemoryTypeDevice,
            SrcDevice = source,
            SrcPitch = (nuint)sourcePitch,
            DstMemoryType = MemoryTypeDevice,
            DstDevice = destination,
            DstPitch = (nuint)destinationPitch,
            WidthInBytes = (nuint)width,
            Height = (nuint)rows,
        };
        return _memcpy2DAsync(&copy, stream);
    }

    private const int MemoryTypeDevice = 2; // CU_MEMORYTYPE_DEVICE

    /// <summary>CUDA_MEMCPY2D (cuda.h): source and destination, each as x/y offsets, memory type, host pointer, device pointer, array and pitch.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct CudaMemcpy2D
    {
        public nuint SrcXInBytes;
        public nuint SrcY;
        public int SrcMemoryType;
        public nint SrcHost;
        public ulong SrcDevice;
        public nint SrcArray;
        public nuint SrcPitch;
        public nuint DstXInBytes;
        public nuint DstY;
        public int DstMemoryType;
        public nint DstHost;
        public ulong DstDevice;
        public nint DstArray;
        public nuint DstPitch;
        public nuint WidthInBytes;
        public nuint Height;
    }

    public nint CreateStream()
    {
        nint s;
        Check(_streamCreate(&s, StreamNonBlocking), "cuStreamCreate");
        return s;
    }

    public void DestroyStream(nint stream) => Check(_streamDestroy(stream), "cuStreamDestroy");

    public void Synchronize(nint stream) => Check(_streamSynchronize(stream), "cuStreamSynchronize");

    public nint CreateEvent()
    {
        nint e;
        Check(_eventCreate(&e, EventDisableTiming), "cuEventCreate");
        return e;
    }

    public void DestroyEvent(nint ev) => Check(_eventDestroy(ev), "cuEventDestroy");

    public void Record(nint ev, nint stream) => Check(_eventRecord(ev, stream), "cuEventRecord");

    /// <summary>True when the work before the event is done.</summary>
    public bool IsDone(nint ev)
    {
        var code = _eventQuery(ev);
        if (code == ErrorNotReady)
        {
            return false;
        }
        Check(code, "cuEventQuery");
        return true;
    }

    public void Wait(nint ev) => Check(_eventSynchronize(ev), "cuEventSynchronize");

    public CuIpcMemHandle IpcHandle(ulong pointer)
    {
        CuIpcMemHandle h;
        Check(_ipcGetMemHandle(&h, pointer), "cuIpcGetMemHandle");
        return h;
    }

    public ulong IpcOpen(CuIpcMemHandle handle)
    {
        ulong p;
        Check(_ipcOpenMemHandle(&p, handle, IpcMemLazyEnablePeerAccess), "cuIpcOpenMemHandle");
        return p;
    }

    public void IpcClose(ulong pointer) => Check(_ipcCloseMemHandle(pointer), "cuIpcCloseMemHandle");

    /// <summary>How many bytes of the allocation holding <paramref name="pointer"/> lie from it on (the real size, whatever a peer claims).</summary>
    public long BytesFrom(ulong pointer)
    {
        ulong start;
        nuint size;
        Check(_memGetAddressRange(&start, &size, pointer), "cuMemGetAddressRange");
        return (long)(start + size - pointer);
    }

    /// <summary>The ordinal of the device whose UUID is <paramref name="uuid"/> ("GPU-..."), or -1.</summary>
    public int FindDevice(string uuid)
    {
        for (var i = 0; i < DeviceCount(); i++)
        {
            if (string.Equals(DeviceUuid(Device(i)), uuid, StringComparison.OrdinalIgnoreCase))
            {
                return i;
            }
        }
        return -1;
    }
}
