import base64
import ctypes
import gc
import unittest

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


class FakeDriver:
    """The driver calls IpcMapping makes, over host memory: the 'device pointer' is a host buffer."""

    def __init__(self):
        self.calls = []
        self.memory = ctypes.create_string_buffer(64)
        self.open_handles = 0

    def has(self, name):
        return name != "cuDeviceGetUuid_v2"

    def call(self, name, *args):
        self.calls.append(name)
        if name == "cuDeviceGet":
            args[0]._obj.value = args[1]
        elif name == "cuDevicePrimaryCtxRetain":
            args[0]._obj.value = 0xC7
        elif name in ("cuIpcOpenMemHandle_v2",):
            assert bytes(args[1].reserved).startswith(b"handle") and args[2] == cuda.CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
            args[0]._obj.value = ctypes.addressof(self.memory)
            self.open_handles += 1
        elif name == "cuIpcCloseMemHandle":
            assert args[0].value == ctypes.addressof(self.memory)
            self.open_handles -= 1
        elif name == "cuDeviceGetUuid":
            ctypes.memmove(args[0]._obj.bytes, bytes(range(16)), 16)


class CudaIpcTests(unittest.TestCase):
    def test_Mapping_OpensInThePrimaryContext_AndClosesOnce(self):
        driver = FakeDriver()
        m = cuda.IpcMapping(b"handle".ljust(64, b"\0"), 64, 1, driver=driver)
        self.assertEqual(m.__cuda_array_interface__, {"shape": (64,), "typestr": "|u1", "data": (ctypes.addressof(driver.memory), False), "version": 2})
        self.assertEqual(driver.calls, ["cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxPushCurrent_v2", "cuIpcOpenMemHandle_v2", "cuCtxPopCurrent_v2"])
        m.close()
        m.close()
        self.assertEqual(driver.open_handles, 0)
        self.assertEqual(driver.calls[-4:], ["cuCtxPushCurrent_v2", "cuIpcCloseMemHandle", "cuCtxPopCurrent_v2", "cuDevicePrimaryCtxRelease_v2"])

    def test_Mapping_ClosedByItsFinalizer(self):
        driver = FakeDriver()
        m = cuda.IpcMapping(b"handle".ljust(64, b"\0"), 64, 0, driver=driver)
        del m
        gc.collect()
        self.assertEqual(driver.open_handles, 0)

    def test_Mapping_WrongHandleLength(self):
        with self.assertRaisesRegex(ValueError, "64 bytes, got 3"):
            cuda.IpcMapping(b"abc", 64, 0, driver=FakeDriver())

    def test_Segment_OverAnIpcMapping_SharesTheHostPath(self):
        # Everything but torch.as_tensor on a GPU: the whole-buffer tensor is a host view of the same bytes.
        driver = FakeDriver()
        driver.memory[8:16] = (7).to_bytes(8, "little")
        seg = segments.Segment("cuda-ipc", "test", 64, lambda: cuda.IpcMapping(b"handle".ljust(64, b"\0"), 64, 0, driver=driver),
                               lambda m: torch.frombuffer(driver.memory, dtype=torch.uint8)[:m.size], lambda m: m.close())
        self.assertEqual(seg.view("I64", [], 8, 8).item(), 7)
        self.assertEqual(seg.release(), 0)
        self.assertEqual(driver.open_handles, 0)

    def test_OpenCudaIpc_BadBase64(self):
        with self.assertRaises(ValueError):
            segments.open_cuda_ipc("not base64!", 64, "cuda:0")

    def test_DeviceUuid_FromTheDriver_IsNvidiaSmiForm(self):
        self.assertEqual(cuda.device_uuid(0, driver=FakeDriver()), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f")

    def test_Handle_IsBase64Of64Bytes(self):
        self.assertEqual(len(base64.b64decode(base64.b64encode(bytes(64)))), cuda.IPC_HANDLE_BYTES)


if __name__ == "__main__":
    unittest.main()
