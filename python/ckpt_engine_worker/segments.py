"""The device buffer a parameter server attaches: a shared-memory segment ("shm", host backend) or
CUDA device memory ("cuda-ipc"). Both are seen as ONE flat uint8 tensor over the whole buffer, and
every weight is a view of it (slice, then dtype, then shape), so the host and CUDA paths share all
code but the opening and closing of the memory.
"""

import base64
import ctypes
import gc
import hashlib
import mmap
import os
import sys
import threading
import time
import warnings
import zlib

import torch

from . import dtypes

SHM_DIRECTORY = "/dev/shm"

MADV_POPULATE_READ = 22
"""madvise(2): fault pages in for reading, in one call (Linux 5.14+)."""

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _LIBC = libc
    return _LIBC


class Segment:
    """A mapped device buffer. `open_owner()` makes the object whose memory it is (an mmap, or an
    IpcMapping) and `make_whole(owner)` the flat uint8 tensor over it; torch's storage holds a
    reference to the owner, which is how `release` knows whether any view outlived the update.
    With `fetch(owner, address, offset, nbytes)`, the whole tensor is a host copy instead, and the
    bytes of a range are fetched into it (at `address`) each time the range is viewed or hashed."""

    def __init__(self, kind, name, size, open_owner, make_whole, close, synchronize=None, fetch=None):
        self.kind = kind
        self.name = name
        self.size = size
        self._close = close
        self._make_whole = make_whole
        self._synchronize = synchronize
        self._fetch = fetch
        owner = open_owner()
        try:
            self._owner = owner
            # Referrers now: `owner`, self._owner and getrefcount's argument, as in `release`.
            self._baseline = sys.getrefcount(owner)
            self._whole = make_whole(owner)
        except BaseException:
            self._whole = self._owner = None
            close(owner)
            raise
        if self._whole.dtype != torch.uint8 or tuple(self._whole.shape) != (size,):
            raise RuntimeError("segment %s: expected a flat uint8 tensor of %d bytes, got %s %s" % (
                name, size, self._whole.dtype, tuple(self._whole.shape)))
        self._sizes = {}

    @property
    def device(self):
        return self._whole.device

    def view(self, dtype_name, shape, offset, nbytes):
        """The tensor of `nbytes` bytes at `offset` as `dtype_name` and `shape`, without a copy.
        Raises UnsupportedDType for a dtype this torch lacks, ValueError for a misaligned offset."""
        dtype = dtypes.torch_dtype(dtype_name)
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype, device=self.device)
        item = self._sizes.get(dtype)
        if item is None:
            item = self._sizes[dtype] = torch.empty(0, dtype=dtype).element_size()
        if offset % item:
            raise ValueError("offset %d is not a multiple of the %d-byte size of %s" % (offset, item, dtype_name))
        self._fetch_range(offset, nbytes)
        flat = self._whole[offset:offset + nbytes]
        return (flat.view(dtype) if dtype != torch.uint8 else flat).view(shape)

    def strided_view(self, dtype_name, shape, dim, offset, pitch, extent):
        """A part that lies in place inside its whole tensor, without a copy: `shape` (the part's), in rows (one per index of
        the dimensions before `dim`) `pitch` bytes apart, the first at `offset`, `extent` bytes from the first to the end of
        the last. Host memory only. Raises UnsupportedDType for a dtype this torch lacks, ValueError for a misaligned row."""
        if self._fetch is not None or self.kind != "shm":
            raise ValueError("parts in place come only in shared memory, not in a %s buffer" % self.kind)
        dtype = dtypes.torch_dtype(dtype_name)
        item = torch.empty(0, dtype=dtype).element_size()
        if offset % item or pitch % item:
            raise ValueError("offset %d or pitch %d is not a multiple of the %d-byte size of %s" % (offset, pitch, item, dtype_name))
        if extent == 0:
            return torch.empty(shape, dtype=dtype)
        flat = self._whole[offset:offset + extent]
        base = flat.view(dtype) if dtype != torch.uint8 else flat
        strides, step = [0] * len(shape), 1
        for i in range(len(shape) - 1, dim - 1, -1):  # Inside a row: contiguous.
            strides[i], step = step, step * shape[i]
        step = pitch // item
        for i in range(dim - 1, -1, -1):  # Across rows: the whole tensor's pitch.
            strides[i], step = step, step * shape[i]
        return base.as_strided(shape, strides)

    def sha256(self, offset, nbytes):
        """Hex SHA-256 of a byte range (a copy to the host first when the buffer is on a GPU)."""
        if isinstance(self._owner, mmap.mmap):
            return hashlib.sha256(memoryview(self._owner)[offset:offset + nbytes]).hexdigest()
        self._fetch_range(offset, nbytes)
        return tensor_sha256(self._whole[offset:offset + nbytes])

    def crc32(self, offset, nbytes):
        """CRC-32 (zlib's) of a byte range, over the mapping without a copy; a buffer on a GPU is
        copied to the host in pieces of CRC_PIECE bytes first."""
        if isinstance(self._owner, mmap.mmap):
            return zlib.crc32(memoryview(self._owner)[offset:offset + nbytes])
        self._fetch_range(offset, nbytes)
        return tensor_crc32(self._whole[offset:offset + nbytes])

    def _fetch_range(self, offset, nbytes):
        if self._fetch is not None:
            self._fetch(self._owner, self._whole.data_ptr() + offset, offset, nbytes)

    def synchronize(self):
        """Waits for work that reads the buffer (copies queued on a GPU stream) to finish, so the
        parameter server may overwrite it once we reply."""
        if self._synchronize is not None and self._whole is not None:
            self._synchronize()

    def outstanding(self):
        """How many references to the mapping's memory outlived their views' use (tensors a loader kept instead of copying),
        as `release` counts them, but leaving it mapped. Views share the whole tensor's storage, so the whole tensor is let
        go while counting and made again after (a header over the same mapping: nothing is read)."""
        if self._whole is None:
            return 0
        extra = self._views_left()
        self._whole = self._make_whole(self._owner)
        return extra

    def release(self):
        """Unmaps the buffer now if nothing views it; else leaves that to the last view's finalizer.
        Returns the number of references that outlived the update (0 when all is well)."""
        if self._whole is None:
            return 0
        extra = self._views_left()
        owner, self._owner = self._owner, None
        if extra == 0:
            self._close(owner)
        return extra

    def _views_left(self):
        """Lets the whole tensor go and counts the references to the mapping beyond this object's own: views that outlived it."""
        self._whole = None
        extra = sys.getrefcount(self._owner) - (self._baseline - 1)  # The baseline counted a local name too.
        if extra > 0:
            gc.collect()
            extra = sys.getrefcount(self._owner) - (self._baseline - 1)
        return max(0, extra)

    def prefault_resident(self):
        """Faults in the pages of a host mapping that hold data already (written by the segment's owner) and leaves its holes
        alone (reading a hole of a shared-memory file allocates it): what a prepare does for an update that will read the
        owners' segments in place, so its first copies run as warm ones. Returns the bytes faulted in (0 where mincore fails)."""
        if self.kind != "shm" or self._whole is None or self.size == 0:
            return 0
        page = mmap.PAGESIZE
        address, pages = self._whole.data_ptr(), (self.size + page - 1) // page
        resident = (ctypes.c_ubyte * pages)()
        if _libc().mincore(ctypes.c_void_p(address), ctypes.c_size_t(self.size), resident) != 0:
            return 0
        faulted, i = 0, 0
        while i < pages:
            j = i + 1
            while j < pages and (resident[j] & 1) == (resident[i] & 1):
                j += 1
            if resident[i] & 1:
                start, end = i * page, min(j * page, self.size)
                if _libc().madvise(ctypes.c_void_p(address + start), ctypes.c_size_t(end - start), MADV_POPULATE_READ) != 0:
                    int(self._whole[start:end:page].sum())  # Before Linux 5.14: a read per page.
                faulted += end - start
            i = j
        return faulted

    def fits(self, name, size):
        """Whether this is still a mapping of /dev/shm/<name> with at least `size` bytes (a name that is gone was unregistered)."""
        return self.name == name and self.size >= size and self.exists()

    def exists(self):
        """Whether this host mapping's segment still has its name (its owner has not unlinked it)."""
        return self.kind == "shm" and self._whole is not None and os.path.exists(os.path.join(SHM_DIRECTORY, self.name))

    @property
    def released(self):
        return self._whole is None


def tensor_sha256(tensor):
    """Hex SHA-256 of a tensor's bytes in memory order (copied to a contiguous host tensor first if
    it is not one already; no Python bytes object is made)."""
    t = tensor.detach()
    if t.device.type != "cpu" or not t.is_contiguous():
        t = t.contiguous().cpu()
    n = t.numel() * t.element_size()
    if n == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256((ctypes.c_ubyte * n).from_address(t.data_ptr())).hexdigest()


CRC_PIECE = 64 << 20


def tensor_crc32(tensor):
    """CRC-32 (zlib.crc32, the checksum of the worker protocol) of a tensor's bytes in memory order.
    Host memory is read in place (zlib releases the GIL and runs at several GB/s); a GPU tensor is
    copied to the host in pieces of CRC_PIECE bytes, so no second full-size copy is made."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8) if tensor.numel() else None
    if flat is None:
        return 0
    crc = 0
    for start in range(0, flat.numel(), CRC_PIECE):
        piece = flat[start:start + CRC_PIECE]
        if piece.device.type != "cpu":
            piece = piece.cpu()
        crc = zlib.crc32((ctypes.c_ubyte * piece.numel()).from_address(piece.data_ptr()), crc)
    return crc


def open_shm(name, size, writable=True):
    """Maps the first `size` bytes of /dev/shm/<name>, read-write or read-only (another rank's memory that every
    worker on the host reads). Pages are faulted in as they are read, not up front: a segment may have holes (a
    rank's device slots that an update in place never fills), and populating them would allocate memory."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError("'%s' is not a valid shared memory segment name" % name)
    path = os.path.join(SHM_DIRECTORY, name)
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        length = os.fstat(fd).st_size
        if length < size:
            raise ValueError("shared memory segment %s is %d bytes, expected at least %d" % (path, length, size))
        flags = mmap.MAP_SHARED
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return Segment("shm", name, size, lambda: mmap.mmap(fd, size, flags=flags, prot=prot), _flat, lambda m: m.close())
    finally:
        os.close(fd)


def _flat(m):
    """A flat uint8 tensor over a mapping; torch warns that a read-only one is not writable, which is the point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(m, dtype=torch.uint8)


def open_cuda_ipc(handle, size, device=None, *, through_driver=False):
    """Opens a CUDA IPC handle (base64 of the 64-byte CUipcMemHandle) on `device` (default: the
    current CUDA device) and views its `size` bytes.

    through_driver: instead of viewing device memory, copy each viewed range to a host tensor with
        the driver (cuMemcpyDtoH). Only for tests on a machine whose torch has no CUDA (the CPU
        tests run the worker against a stand-in driver); an engine never wants the copies."""
    from .cuda import IpcMapping

    raw = base64.b64decode(handle, validate=True)
    index = torch.device(device).index if device is not None else None
    if index is None:
        index = torch.cuda.current_device()
    name = "cuda-ipc handle on cuda:%d" % index
    if through_driver:
        return Segment("cuda-ipc", name, size, lambda: IpcMapping(raw, size, index),
                       lambda m: torch.empty(size, dtype=torch.uint8), lambda m: m.close(),
                       fetch=lambda m, address, offset, nbytes: m.copy_to_host(address, offset, nbytes))
    target = torch.device("cuda", index)
    return Segment("cuda-ipc", name, size, lambda: IpcMapping(raw, size, index),
                   lambda m: torch.as_tensor(m, device=target), lambda m: m.close(),
                   lambda: torch.cuda.synchronize(target))


def open_segment(kind, handle, size, device=None):
    """Maps the buffer an attach message names."""
    if kind == "shm":
        return open_shm(handle, size)
    if kind == "cuda-ipc":
        return open_cuda_ipc(handle, size, device)
    raise ValueError("segment kind '%s' is not supported (this worker maps 'shm' and 'cuda-ipc')" % kind)


class HostMappings:
    """Keeps each device socket's shared-memory buffer mapped between updates, with the owners' registered segments an
    attach named beside it. The parameter server keeps its device buffer while the bucket layout is unchanged (and pooled
    registrations keep their segments), so the next update names the same segments: mapping them again and faulting
    every page in cost more than the copies themselves. A different buffer for the same socket replaces the old mapping,
    registered segments an attach no longer names are unmapped then (their memory is freed once their owner unregistered
    them), a failure unmaps all of the socket's, and a mapping an update is using is never unmapped under it. Between
    updates a sweep every SWEEP_SECONDS unmaps the segments whose names are gone (a one-shot `update` whose ranks exited, a
    checkpoint unregistered), so their memory is not pinned here until the next update.
    Only host memory ("shm"): CUDA IPC handles are closed at every release, so the parameter server may free its memory."""

    SWEEP_SECONDS = 2.0

    def __init__(self):
        self._lock = threading.Lock()
        self._by_address = {}  # socket address -> _Kept
        self._sweeping = False

    def acquire(self, address, name, size, registered):
        """(buffer, [registered segments in their order]) for an update on `address`: kept mappings where the attach names
        the same segments (still there, large enough), fresh ones for the rest; marked in use until `give_back` or `drop`."""
        with self._lock:
            kept = self._by_address.get(address)
            if kept is not None and kept.in_use:
                raise RuntimeError("device socket %s is already receiving an update" % address)
            if kept is not None and not kept.buffer.fits(name, size):
                del self._by_address[address]
                kept.close()
                kept = None
            if kept is None:
                kept = self._by_address[address] = _Kept(open_shm(name, size))
            try:
                mapped, named = [], {}
                for handle, nbytes in registered:
                    segment = named.get(handle)
                    if segment is None:
                        segment = kept.registered.pop(handle, None)
                        if segment is not None and not segment.fits(handle, nbytes):
                            segment.release()
                            segment = None
                        segment = named[handle] = segment or open_shm(handle, nbytes, writable=False)
                    mapped.append(segment)
                kept.drop_registered()  # Those no longer named.
                kept.registered = named
            except BaseException:
                del self._by_address[address]
                kept.close()
                raise
            kept.in_use = True
            return kept.buffer, mapped

    def give_back(self, address):
        """The update on `address` is done with its mappings; they stay for the next one (while their segments exist)."""
        with self._lock:
            kept = self._by_address.get(address)
            if kept is not None:
                kept.in_use = False
            if self._by_address and not self._sweeping:
                self._sweeping = True
                threading.Thread(target=self._sweep, name="ckpt-engine-host-mappings", daemon=True).start()

    def sweep_once(self):
        """Unmaps what no update uses and whose segment is gone: a socket's whole entry when its buffer is, else the
        registered segments that are. Returns whether anything is still kept."""
        gone = []
        with self._lock:
            for address, kept in list(self._by_address.items()):
                if kept.in_use:
                    continue
                if not kept.buffer.exists():
                    gone.append(self._by_address.pop(address))
                    continue
                for name in [n for n, segment in kept.registered.items() if not segment.exists()]:
                    gone.append(kept.registered.pop(name))
            left = bool(self._by_address)
        for item in gone:
            if isinstance(item, _Kept):
                item.close()
            else:
                item.release()
        return left

    def _sweep(self):
        while True:
            time.sleep(self.SWEEP_SECONDS)
            self.sweep_once()
            with self._lock:
                if not self._by_address:
                    self._sweeping = False
                    return

    def drop(self, address):
        """Unmaps the socket's buffer and the registered segments beside it (after a failure they may be gone for good)."""
        with self._lock:
            kept = self._by_address.pop(address, None)
        if kept is not None:
            kept.close()

    def addresses(self):
        with self._lock:
            return sorted(self._by_address)


class _Kept:
    def __init__(self, buffer):
        self.buffer = buffer
        self.registered = {}  # name -> Segment, read-only
        self.in_use = False

    def drop_registered(self):
        for segment in self.registered.values():
            segment.release()
        self.registered = {}

    def close(self):
        self.buffer.release()
        self.drop_registered()


HOST_MAPPINGS = HostMappings()
"""The process's kept host mappings (one entry per device socket this process receives on)."""
