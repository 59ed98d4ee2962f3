import base64
import ctypes
import gc
import hashlib
import os
import subprocess
import sys
import unittest
import zlib
from unittest import mock

import torch

from ckpt_engine_worker import cuda, segments
from ckpt_engine_worker.dtypes import UnsupportedDType
from support import FakeServer, sample_tensors, shm_mappings


class HostSegmentTests(unittest.TestCase):
    def setUp(self):
        self.server = FakeServer(listen=False)
        self.addCleanup(self.server.close)

    def test_Views_AreBitExact_ForEverySupportedDType(self):
        tensors = sample_tensors()
        wire = self.server.pack(tensors)
        seg = segments.open_shm(self.server.segment, self.server.size)
        try:
            for w in wire:
                view = seg.view(w["dtype"], w["shape"], w["offset"], w["nbytes"])
                source = tensors[w["name"]]
                self.assertEqual((view.dtype, view.shape), (source.dtype, source.shape), w["name"])
                self.assertEqual(segments.tensor_sha256(view), segments.tensor_sha256(source), w["name"])
                self.assertEqual(seg.sha256(w["offset"], w["nbytes"]), segments.tensor_sha256(source))
            del view
        finally:
            self.assertEqual(seg.release(), 0)

    def test_Views_AreNotCopies(self):
        seg = segments.open_shm(self.server.segment, self.server.size)
        view = seg.view("I32", [2], 256, 8)
        self.server.memory[256:260] = (1234).to_bytes(4, "little")
        self.assertEqual(view[0].item(), 1234)
        del view
        seg.release()

    def test_Release_UnmapsTheSegment(self):
        seg = segments.open_shm(self.server.segment, self.server.size)
        self.assertEqual(shm_mappings(self.server.segment), 2)  # the server's and ours
        self.assertEqual(seg.release(), 0)
        self.assertEqual(shm_mappings(self.server.segment), 1)
        self.assertEqual(seg.release(), 0)  # idempotent

    def test_Release_WithAViewKept_CountsItAndUnmapsWhenItDies(self):
        seg = segments.open_shm(self.server.segment, self.server.size)
        kept = seg.view("F32", [4], 0, 16)
        self.assertEqual(seg.release(), 1)
        self.assertEqual(shm_mappings(self.server.segment), 2)
        self.assertEqual(kept.sum().item(), 0.0)  # still valid memory
        del kept
        gc.collect()
        self.assertEqual(shm_mappings(self.server.segment), 1)

    def test_View_MisalignedOffset_IsAClearError(self):
        seg = segments.open_shm(self.server.segment, self.server.size)
        with self.assertRaisesRegex(ValueError, "offset 2 is not a multiple of the 4-byte size of F32"):
            seg.view("F32", [1], 2, 4)
        seg.release()

    @unittest.skipIf(hasattr(torch, "float8_e4m3fn"), "this torch has float8")
    def test_View_DTypeThisTorchLacks_NamesIt(self):
        seg = segments.open_shm(self.server.segment, self.server.size)
        with self.assertRaisesRegex(UnsupportedDType, "F8_E4M3 is not supported by torch"):
            seg.view("F8_E4M3", [4], 0, 4)
        seg.release()

    def test_OpenShm_TooSmallOrMissing_SaysSo(self):
        with self.assertRaisesRegex(ValueError, "is 65536 bytes, expected at least 65537"):
            segments.open_shm(self.server.segment, self.server.size + 1)
        with self.assertRaises(FileNotFoundError):
            segments.open_shm("ckpt-test-missing", 16)
        with self.assertRaisesRegex(ValueError, "not a valid shared memory segment name"):
            segments.open_shm("../etc/passwd", 16)

    def test_OpenSegment_UnknownKind(self):
        with self.assertRaisesRegex(ValueError, "kind 'rdma' is not supported"):
            segments.open_segment("rdma", "x", 16)


HANDLE = bytes(range(64))
"""A handle with a NUL first and bytes after it, as real ones have (a C-string copy loses them)."""


def scalar_crc32(data):
    """The IEEE CRC-32 bit by bit, from its definition: the reference the fast paths must equal."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class Crc32Tests(unittest.TestCase):
    def test_TensorCrc32_EqualsTheScalarDefinition_ForOddSizesAndEveryDType(self):
        self.assertEqual(scalar_crc32(b"123456789"), 0xCBF43926)  # The standard check value.
        generator = torch.Generator().manual_seed(19)
        for n in (0, 1, 3, 7, 255, 256, 257, 4099):
            data = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=generator)
            with self.subTest(n=n):
                self.assertEqual(segments.tensor_crc32(data), scalar_crc32(bytes(data.tolist())))
        for name, t in sample_tensors().items():
            with self.subTest(name):
                raw = t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
                self.assertEqual(segments.tensor_crc32(t), zlib.crc32(bytes(raw.tolist())))

    def test_TensorCrc32_InPieces_EqualsOneCall(self):
        data = torch.randint(0, 256, (1000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
        with mock.patch.object(segments, "CRC_PIECE", 64):
            self.assertEqual(segments.tensor_crc32(data), zlib.crc32(bytes(data.tolist())))
            self.assertEqual(segments.tensor_crc32(data.view(torch.int32).reshape(10, 25).t()), zlib.crc32(
                bytes(data.view(torch.int32).reshape(10, 25).t().contiguous().view(torch.uint8).reshape(-1).tolist())))

    def test_SegmentCrc32_ReadsTheMappingInPlace(self):
        server = FakeServer(listen=False)
        self.addCleanup(server.close)
        wire = server.pack(sample_tensors(), crc32=True)
        seg = segments.open_shm(server.segment, server.size)
        try:
            for w in wire:
                self.assertEqual("%08x" % seg.crc32(w["offset"], w["nbytes"]), w["crc32"], w["name"])
        finally:
            self.assertEqual(seg.release(), 0)


class FakeDriver:
    """The driver calls IpcMapping makes, over host memory: the 'device pointer' is a host buffer.
    It records the handle bytes it is given and the context stack, and refuses what a driver would."""

    def __init__(self):
        self.calls = []
        self.memory = ctypes.create_string_buffer(64)
        self.open_handles = 0
        self.handles = []
        self.contexts = []

    def has(self, name):
        return name != "cuDeviceGetUuid_v2"

    def call(self, name, *args):
        self.calls.append(name)
        if name == "cuDeviceGet":
            args[0]._obj.value = args[1]
        elif name == "cuDevicePrimaryCtxRetain":
            args[0]._obj.value = 0xC7
        elif name == "cuCtxPushCurrent_v2":
            self.contexts.append(args[0].value)
        elif name == "cuCtxPopCurrent_v2":
            args[0]._obj.value = self.contexts.pop()
        elif name == "cuIpcOpenMemHandle_v2":
            assert self.contexts == [0xC7] and args[2] == cuda.CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
            self.handles.append(bytes(args[1].reserved))
            args[0]._obj.value = ctypes.addressof(self.memory)
            self.open_handles += 1
        elif name == "cuMemGetAddressRange_v2":
            assert self.contexts == [0xC7] and args[2].value == ctypes.addressof(self.memory)
            args[0]._obj.value, args[1]._obj.value = ctypes.addressof(self.memory), len(self.memory)
        elif name == "cuIpcCloseMemHandle":
            assert self.contexts == [0xC7] and args[0].value == ctypes.addressof(self.memory)
            self.open_handles -= 1
        elif name == "cuMemcpyDtoH_v2":
            source, n = args[1].value - ctypes.addressof(self.memory), args[2].value
            assert self.contexts == [0xC7] and 0 <= source and source + n <= len(self.memory)
            ctypes.memmove(args[0].value, args[1].value, n)
        elif name == "cuDeviceGetUuid":
            ctypes.memmove(args[0]._obj.bytes, bytes(range(16)), 16)


class CudaIpcTests(unittest.TestCase):
    def test_Mapping_PassesEveryHandleByteToTheDriver(self):
        driver = FakeDriver()
        cuda.IpcMapping(HANDLE, 64, 0, driver=driver).close()
        self.assertEqual(driver.handles, [HANDLE])

    def test_HandleStruct_KeepsTheBytesAfterANul(self):
        # What the driver reads is the struct's memory, passed by value: all 64 bytes must be in it.
        handle = cuda.CUipcMemHandle.from_buffer_copy(HANDLE)
        self.assertEqual(ctypes.string_at(ctypes.addressof(handle), ctypes.sizeof(handle)), HANDLE)
        self.assertEqual(ctypes.sizeof(cuda.CUipcMemHandle), cuda.IPC_HANDLE_BYTES)

    def test_Mapping_OpensInThePrimaryContext_AndClosesOnce(self):
        driver = FakeDriver()
        m = cuda.IpcMapping(HANDLE, 64, 1, driver=driver)
        self.assertEqual(m.__cuda_array_interface__, {"shape": (64,), "typestr": "|u1", "data": (ctypes.addressof(driver.memory), False), "version": 2})
        self.assertEqual(driver.calls, ["cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxPushCurrent_v2", "cuIpcOpenMemHandle_v2", "cuMemGetAddressRange_v2",
                                        "cuCtxPopCurrent_v2"])
        m.close()
        m.close()
        self.assertEqual(driver.open_handles, 0)
        self.assertEqual(driver.contexts, [])
        self.assertEqual(driver.calls[-4:], ["cuCtxPushCurrent_v2", "cuIpcCloseMemHandle", "cuCtxPopCurrent_v2", "cuDevicePrimaryCtxRelease_v2"])

    def test_Mapping_SizeBeyondTheAllocation_IsRefused_AndTheHandleClosed(self):
        driver = FakeDriver()
        with self.assertRaisesRegex(ValueError, "the attach claims 65 bytes, but the CUDA IPC allocation holds 64"):
            cuda.IpcMapping(HANDLE, 65, 0, driver=driver)
        self.assertEqual((driver.open_handles, driver.contexts), (0, []))
        self.assertEqual(driver.calls[-1], "cuDevicePrimaryCtxRelease_v2")

    def test_Mapping_ClosedByItsFinalizer(self):
        driver = FakeDriver()
        m = cuda.IpcMapping(HANDLE, 64, 0, driver=driver)
        del m
        gc.collect()
        self.assertEqual(driver.open_handles, 0)

    def test_Mapping_WrongHandleLength(self):
        with self.assertRaisesRegex(ValueError, "64 bytes, got 3"):
            cuda.IpcMapping(b"abc", 64, 0, driver=FakeDriver())

    def test_CopyToHost_CopiesTheRangeInTheContext_AndChecksIt(self):
        driver = FakeDriver()
        driver.memory[:] = bytes(range(100, 164))
        m = cuda.IpcMapping(HANDLE, 64, 0, driver=driver)
        out = ctypes.create_string_buffer(8)
        m.copy_to_host(ctypes.addressof(out), 56, 8)
        self.assertEqual(out.raw, bytes(range(156, 164)))
        self.assertEqual(driver.contexts, [])
        with self.assertRaisesRegex(ValueError, r"bytes \[60, 68\) are outside the 64-byte buffer"):
            m.copy_to_host(ctypes.addressof(out), 60, 8)
        m.close()
        with self.assertRaisesRegex(ValueError, "closed"):
            m.copy_to_host(ctypes.addressof(out), 0, 8)

    def test_Segment_OverAnIpcMapping_SharesTheHostPath(self):
        # Everything but torch.as_tensor on a GPU: the whole-buffer tensor is a host view of the same bytes.
        driver = FakeDriver()
        driver.memory[8:16] = (7).to_bytes(8, "little")
        seg = segments.Segment("cuda-ipc", "test", 64, lambda: cuda.IpcMapping(HANDLE, 64, 0, driver=driver),
                               lambda m: torch.frombuffer(driver.memory, dtype=torch.uint8)[:m.size], lambda m: m.close())
        self.assertEqual(seg.view("I64", [], 8, 8).item(), 7)
        self.assertEqual(seg.release(), 0)
        self.assertEqual(driver.open_handles, 0)

    def test_OpenCudaIpc_ThroughTheDriver_ViewsFreshHostCopies(self):
        driver = FakeDriver()
        with mock.patch.object(cuda.Driver, "get", lambda: driver):
            seg = segments.open_cuda_ipc(base64.b64encode(HANDLE).decode(), 64, "cuda:1", through_driver=True)
        self.assertEqual((driver.handles, seg.device.type), ([HANDLE], "cpu"))
        driver.memory[8:16] = (7).to_bytes(8, "little")
        self.assertEqual(seg.view("I64", [], 8, 8).item(), 7)
        driver.memory[8:16] = (9).to_bytes(8, "little")  # The next bucket, written into the same buffer.
        self.assertEqual(seg.sha256(8, 8), hashlib.sha256((9).to_bytes(8, "little")).hexdigest())
        self.assertEqual(seg.crc32(8, 8), zlib.crc32((9).to_bytes(8, "little")))  # Fetched to the host first.
        self.assertEqual(seg.view("I64", [], 8, 8).item(), 9)
        seg.synchronize()
        self.assertEqual(seg.release(), 0)
        self.assertEqual((driver.open_handles, driver.contexts), (0, []))

    def test_OpenCudaIpc_BadBase64(self):
        with self.assertRaises(ValueError):
            segments.open_cuda_ipc("not base64!", 64, "cuda:0")

    def test_DeviceUuid_FromTheDriver_IsNvidiaSmiForm(self):
        self.assertEqual(cuda.device_uuid(0, driver=FakeDriver()), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f")

    @unittest.skipIf(torch.cuda.is_available(), "torch has CUDA here: it answers itself")
    def test_DeviceUuid_TorchWithoutCuda_AsksTheDriver(self):
        with mock.patch.object(cuda.Driver, "get", FakeDriver):
            self.assertEqual(cuda.device_uuid(0), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f")

    def test_DriverLibrary_FromTheVariable_NamedWhenItCannotLoad(self):
        script = "from ckpt_engine_worker import cuda\ntry:\n    cuda.Driver.get()\nexcept cuda.CudaError as e:\n    print(e)"
        env = dict(os.environ, CKPT_ENGINE_CUDA_LIBRARY="/nonexistent/libcuda-stand-in.so", PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.startswith("cannot load the CUDA driver /nonexistent/libcuda-stand-in.so: "), out.stdout)

    def test_Handle_IsBase64Of64Bytes(self):
        self.assertEqual(len(base64.b64decode(base64.b64encode(bytes(64)))), cuda.IPC_HANDLE_BYTES)


if __name__ == "__main__":
    unittest.main()


class HostMappingsTests(unittest.TestCase):
    """The mappings a receiver keeps between updates, per device socket."""

    def setUp(self):
        self.buffer = FakeServer(listen=False)
        self.owner = FakeServer(listen=False)
        self.addCleanup(self.owner.close)
        self.addCleanup(self.buffer.close)
        self.mappings = segments.HostMappings()
        self.addCleanup(self.mappings.drop, "@dev")

    def test_SameSegments_Reused_LargerOrGone_MappedAgain(self):
        half = self.buffer.size // 2
        first, registered = self.mappings.acquire("@dev", self.buffer.segment, half, [(self.owner.segment, 64), (self.owner.segment, 64)])
        self.assertIs(registered[0], registered[1])  # Named twice, mapped once.
        self.mappings.give_back("@dev")
        again, registered_again = self.mappings.acquire("@dev", self.buffer.segment, half, [(self.owner.segment, 64)])
        self.assertEqual((again, registered_again[0]), (first, registered[0]))
        self.mappings.give_back("@dev")
        larger, _ = self.mappings.acquire("@dev", self.buffer.segment, self.buffer.size, [(self.owner.segment, 64)])
        self.assertIsNot(larger, first)
        self.assertTrue(first.released)
        self.assertEqual(shm_mappings(self.buffer.segment), 2)  # This one's own mapping and the new one: the old is gone.
        self.mappings.give_back("@dev")
        os.unlink("/dev/shm/" + self.owner.segment)  # Its owner unregistered it: a stale mapping is not reused.
        with self.assertRaises(FileNotFoundError):
            self.mappings.acquire("@dev", self.buffer.segment, self.buffer.size, [(self.owner.segment, 64)])
        self.assertEqual(self.mappings.addresses(), [])  # The failed acquire let go of everything for the socket.
        self.assertTrue(larger.released)

    def test_Sweep_UnmapsWhatIsGone_NeverWhatAnUpdateUses(self):
        buffer, (registered,) = self.mappings.acquire("@dev", self.buffer.segment, 64, [(self.owner.segment, 64)])
        os.unlink("/dev/shm/" + self.owner.segment)  # Its owner unregistered it.
        self.assertTrue(self.mappings.sweep_once())
        self.assertFalse(registered.released)  # In use: left alone.
        self.mappings.give_back("@dev")
        self.assertTrue(self.mappings.sweep_once())
        self.assertTrue(registered.released)
        self.assertFalse(buffer.released)  # Still there: kept.
        os.unlink("/dev/shm/" + self.buffer.segment)  # The ranks exited (a one-shot update).
        self.assertFalse(self.mappings.sweep_once())
        self.assertTrue(buffer.released)
        self.assertEqual(self.mappings.addresses(), [])

    def test_InUse_IsNotMappedUnderAnUpdate(self):
        self.mappings.acquire("@dev", self.buffer.segment, 64, [])
        with self.assertRaisesRegex(RuntimeError, "device socket @dev is already receiving an update"):
            self.mappings.acquire("@dev", self.buffer.segment, 64, [])
        self.mappings.give_back("@dev")
        self.mappings.acquire("@dev", self.buffer.segment, 64, [])

    def test_Outstanding_CountsKeptViews_AndLeavesTheMappingUsable(self):
        seg = segments.open_shm(self.buffer.segment, self.buffer.size)
        self.addCleanup(seg.release)
        view = seg.view("F32", [4], 0, 16)
        self.assertEqual(seg.outstanding(), 1)
        del view
        self.assertEqual(seg.outstanding(), 0)
        self.assertEqual(seg.view("U8", [2], 8, 2).tolist(), list(seg._whole[8:10].tolist()))


class PrefaultTests(unittest.TestCase):
    def test_PrefaultResident_MapsThePagesThatHoldData_AndFillsNoHole(self):
        owner = FakeServer(listen=False, size=64 << 12)  # 64 pages; the owner wrote the first 8 and the last one.
        self.addCleanup(owner.close)
        owner.memory[:8 << 12] = b"\x01" * (8 << 12)
        owner.memory[63 << 12:] = b"\x02" * (1 << 12)
        path = "/dev/shm/" + owner.segment
        allocated = os.stat(path).st_blocks
        seg = segments.open_shm(owner.segment, owner.size, writable=False)
        self.addCleanup(seg.release)
        self.assertEqual(mapped_kib(seg._whole.data_ptr()), 0)  # Mapped, nothing faulted in yet.
        self.assertEqual(seg.prefault_resident(), 9 << 12)
        self.assertEqual(mapped_kib(seg._whole.data_ptr()), 9 * 4)
        self.assertEqual(os.stat(path).st_blocks, allocated)  # No hole was read.


def mapped_kib(address):
    """Resident KiB of this process's mapping that starts at `address` (its pages in our page tables), from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(" ", 1)[0]
            if "-" in first and ":" not in first:
                inside = int(first.split("-")[0], 16) == address
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("no mapping starts at %#x" % address)
