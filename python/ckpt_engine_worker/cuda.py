"""The few CUDA driver calls the worker needs, through ctypes: open and close an IPC memory handle,
and a device's UUID. libcuda.so.1 is the driver library torch's CUDA runtime already uses, so this
adds no dependency; it is loaded on first use only (CPU-only machines never touch it).
$CKPT_ENGINE_CUDA_LIBRARY (read once, at import; the parameter server's variable of the same name)
names another driver library, such as the stand-in the CPU tests build.
"""

import ctypes
import os
import threading

LIBRARY_VARIABLE = "CKPT_ENGINE_CUDA_LIBRARY"
LIBRARY = os.environ.get(LIBRARY_VARIABLE) or "libcuda.so.1"
IPC_HANDLE_BYTES = 64
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1

CUdeviceptr = ctypes.c_uint64
CUcontext = ctypes.c_void_p
CUdevice = ctypes.c_int


class CUipcMemHandle(ctypes.Structure):
    # Bytes, not c_char: ctypes reads and writes a c_char array as a C string, so every byte after
    # the first NUL would be lost, and real handles contain NULs. Make one with `from_buffer_copy`.
    _fields_ = [("reserved", ctypes.c_ubyte * IPC_HANDLE_BYTES)]


class CUuuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_ubyte * 16)]


class CudaError(RuntimeError):
    """A driver call failed; the text names the call and the driver's error."""


class Driver:
    """libcuda.so.1, loaded once; every call goes through `call`, which raises CudaError on failure."""

    _lock = threading.Lock()
    _instance = None

    def __init__(self, lib):
        self._lib = lib
        self.call("cuInit", 0)

    @classmethod
    def get(cls):
        with cls._lock:
            if cls._instance is None:
                try:
                    lib = ctypes.CDLL(LIBRARY)
                except OSError as e:
                    raise CudaError("cannot load the CUDA driver %s: %s" % (LIBRARY, e)) from None
                cls._instance = cls(lib)
            return cls._instance

    def has(self, name):
        return hasattr(self._lib, name)

    def call(self, name, *args):
        status = getattr(self._lib, name)(*args)
        if status != 0:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorName(status, ctypes.byref(text))
            raise CudaError("%s failed: %s (%d)" % (name, (text.value or b"?").decode(), status))


def format_uuid(raw):
    """"GPU-" plus the 16 bytes as 8-4-4-4-12 hex digits, as nvidia-smi -L and NVML write it."""
    h = bytes(raw).hex()
    return "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def device_uuid(index, driver=None):
    """The "GPU-<uuid>" id of CUDA device `index` (in this process's numbering): torch's answer where
    torch has CUDA, else the driver's (both number devices within CUDA_VISIBLE_DEVICES)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None) if driver is None and torch.cuda.is_available() else None
    if uuid is not None:
        text = str(uuid)
        return text if text.startswith(("GPU-", "MIG-")) else "GPU-" + text
    driver = driver or Driver.get()
    dev = CUdevice()
    driver.call("cuDeviceGet", ctypes.byref(dev), index)
    raw = CUuuid()
    driver.call("cuDeviceGetUuid_v2" if driver.has("cuDeviceGetUuid_v2") else "cuDeviceGetUuid", ctypes.byref(raw), dev)
    return format_uuid(raw.bytes)


class IpcMapping:
    """Device memory of another process, opened from its IPC handle on device `index`, in the
    device's primary context (the one torch uses). Exposes __cuda_array_interface__ as one flat
    uint8 array, so torch.as_tensor can view it without a copy; torch keeps this object alive while
    any tensor views it, and the handle is closed by `close` or, failing that, when the last such
    tensor is gone."""

    def __init__(self, handle, size, index, driver=None):
        if len(handle) != IPC_HANDLE_BYTES:
            raise ValueError("a CUDA IPC handle is %d bytes, got %d" % (IPC_HANDLE_BYTES, len(handle)))
        self._driver = driver or Driver.get()
        self.size = size
        self.pointer = 0
        self._device = CUdevice()
        self._driver.call("cuDeviceGet", ctypes.byref(self._device), index)
        self._context = CUcontext()
        self._driver.call("cuDevicePrimaryCtxRetain", ctypes.byref(self._context), self._device)
        try:
            pointer = CUdeviceptr()
            with self._current():
                opener = "cuIpcOpenMemHandle_v2" if self._driver.has("cuIpcOpenMemHandle_v2") else "cuIpcOpenMemHandle"
                self._driver.call(opener, ctypes.byref(pointer), CUipcMemHandle.from_buffer_copy(handle), CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
                self.pointer = pointer.value
                # The size in the attach is the parameter server's word; the driver knows the allocation's.
                start, length = CUdeviceptr(), ctypes.c_size_t()
                self._driver.call("cuMemGetAddressRange_v2", ctypes.byref(start), ctypes.byref(length), pointer)
                real = start.value + length.value - pointer.value
                if real < size:
                    self._driver.call("cuIpcCloseMemHandle", pointer)
                    self.pointer = 0
                    raise ValueError("the attach claims %d bytes, but the CUDA IPC allocation holds %d" % (size, real))
        except BaseException:
            self._release_context()
            raise

    @property
    def __cuda_array_interface__(self):
        return {"shape": (self.size,), "typestr": "|u1", "data": (self.pointer, False), "version": 2}

    def copy_to_host(self, address, offset, nbytes):
        """Copies bytes [offset, offset + nbytes) of the buffer to host memory at `address`, through the
        driver (cuMemcpyDtoH): for a caller that cannot view device memory (a torch without CUDA)."""
        if not self.pointer:
            raise ValueError("the IPC mapping is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError("bytes [%d, %d) are outside the %d-byte buffer" % (offset, offset + nbytes, self.size))
        if nbytes:
            with self._current():
                self._driver.call("cuMemcpyDtoH_v2", ctypes.c_void_p(address), CUdeviceptr(self.pointer + offset), ctypes.c_size_t(nbytes))

    def _current(self):
        driver, context = self._driver, self._context

        class _Scope:
            def __enter__(self):
                driver.call("cuCtxPushCurrent_v2", context)

            def __exit__(self, *exc):
                driver.call("cuCtxPopCurrent_v2", ctypes.byref(CUcontext()))

        return _Scope()

    def _release_context(self):
        if self._context:
            self._context = CUcontext()
            self._driver.call("cuDevicePrimaryCtxRelease_v2", self._device)

    def close(self):
        """Closes the handle (idempotent). Only call when no tensor views the memory any more."""
        pointer, self.pointer = self.pointer, 0
        try:
            if pointer:
                with self._current():
                    self._driver.call("cuIpcCloseMemHandle", CUdeviceptr(pointer))
        finally:
            self._release_context()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise; the driver may be gone at exit
            pass
