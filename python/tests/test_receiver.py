import os
import subprocess
import time
import unittest
from unittest import mock

import torch

from ckpt_engine_worker import receive_update, state_dict_loader, WeightReceiveError, WeightUpdateAborted
from ckpt_engine_worker import receiver
from ckpt_engine_worker.segments import tensor_sha256
from support import FakeServer, Worker, sample_tensors, shm_mappings, unique


class ReceiverTests(unittest.TestCase):
    """receive_update against a parameter server double speaking the protocol over a real socket."""

    def setUp(self):
        self.server = FakeServer()
        self.addCleanup(self.server.close)
        self.loaded = {}
        self.finished = 0

    def copy(self, weights):
        for name, t in weights:
            self.loaded[name] = t.clone()

    def finish(self):
        self.finished += 1

    def start(self, load=None, finish=None, idle=5):
        worker = Worker(lambda: receive_update(self.server.ticket, load or self.copy, finish or self.finish, idle_timeout=idle))
        worker.start()
        self.server.accept()
        return worker

    def test_Update_DeliversEveryTensorBitExact_AndKeepsTheMapping(self):
        tensors = sample_tensors()
        worker = self.start()
        self.assertEqual(self.server.attach(), {"ok": True})
        self.assertEqual(shm_mappings(self.server.segment), 2)
        names = list(tensors)
        half = len(names) // 2
        first = self.server.pack({n: tensors[n] for n in names[:half]}, checksums=True)
        self.assertEqual(self.server.call({"type": "load", "bucket": 0, "tensors": first}), {"ok": True})
        second = self.server.pack({n: tensors[n] for n in names[half:]}, start=32768)
        self.assertEqual(self.server.call({"type": "load", "bucket": 1, "tensors": second}), {"ok": True})
        self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
        self.assertEqual(shm_mappings(self.server.segment), 2)  # Kept for the next update.
        self.assertEqual(self.finished, 0)
        self.assertEqual(self.server.call({"type": "finish"}), {"ok": True})
        summary, error = worker.outcome()
        self.assertIsNone(error)
        self.assertEqual((summary.buckets, summary.tensors, summary.device_id), (2, len(tensors), "dev-0"))
        self.assertEqual(self.finished, 1)
        self.assertEqual({n: tensor_sha256(t) for n, t in self.loaded.items()}, {n: tensor_sha256(t) for n, t in tensors.items()})
        self.assertEqual({n: (t.dtype, t.shape) for n, t in self.loaded.items()}, {n: (t.dtype, t.shape) for n, t in tensors.items()})

    def test_Prepare_MapsThenEndsAtRelease_WithoutLoadsOrTheFinishHook_ALoadIsRefused(self):
        worker = self.start()
        self.assertTrue(self.server.prepares)
        attach = {"type": "attach", "kind": "shm", "handle": self.server.segment, "size": self.server.size, "device_id": "dev-0", "prepare": True}
        self.assertEqual(self.server.call(attach), {"ok": True})
        self.assertEqual(shm_mappings(self.server.segment), 2)
        self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
        summary, error = worker.outcome()
        self.assertIsNone(error)
        self.assertEqual((summary.buckets, summary.tensors, summary.device_id, self.finished), (0, 0, "dev-0", 0))
        self.assertEqual(shm_mappings(self.server.segment), 2)  # Kept: the update that follows finds it mapped.

        worker = self.start()
        self.assertEqual(self.server.call(attach), {"ok": True})
        reply = self.server.call({"type": "load", "bucket": 0, "tensors": self.server.pack(sample_tensors())})
        self.assertEqual(reply, {"ok": False, "error": "'load' in a session that only prepares (its attach said \"prepare\")"})
        self.assertEqual(self.loaded, {})
        self.server.conn.close()
        _, error = worker.outcome()
        self.assertIsInstance(error, WeightReceiveError)

    def test_Prepare_WithPrefault_FaultsInTheOwnersPagesThatHoldData_AndKeepsThem(self):
        from ckpt_engine_worker.segments import HOST_MAPPINGS
        from test_segments import mapped_kib

        owner = FakeServer(listen=False)
        self.addCleanup(owner.close)
        owner.pack(sample_tensors())  # Writes the tensors at the segment's start; the rest stays a hole.
        worker = self.start()
        attach = {"type": "attach", "kind": "shm", "handle": self.server.segment, "size": self.server.size, "device_id": "dev-0",
                  "segments": [{"handle": owner.segment, "size": owner.size}], "prepare": True, "prefault": True}
        self.assertEqual(self.server.call(attach), {"ok": True})
        self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
        self.assertIsNone(worker.outcome()[1])
        kept = HOST_MAPPINGS._by_address[self.server.address].registered[owner.segment]
        resident = mapped_kib(kept._whole.data_ptr())
        self.assertGreater(resident, 0)
        self.assertLess(resident, owner.size >> 10)  # Only the pages that hold data.

    def test_RegisteredSegments_TensorsLoadFromWhicheverTheyName_ReadOnly_UnmappedAtRelease(self):
        owner = FakeServer(listen=False)  # Another rank's registered memory on this host.
        self.addCleanup(owner.close)
        tensors = sample_tensors()
        names = list(tensors)
        worker = self.start()
        self.assertTrue(self.server.maps_segments)
        attach = {"type": "attach", "kind": "shm", "handle": self.server.segment, "size": self.server.size, "device_id": "dev-0",
                  "segments": [{"handle": owner.segment, "size": owner.size}]}
        self.assertEqual(self.server.call(attach), {"ok": True})
        self.assertEqual(shm_mappings(owner.segment), 2)
        in_place = [dict(t, segment=1) for t in owner.pack({n: tensors[n] for n in names[:3]}, crc32=True)]
        slot = self.server.pack({n: tensors[n] for n in names[3:]})
        self.assertEqual(self.server.call({"type": "load", "bucket": 0, "tensors": in_place + slot}), {"ok": True})
        bad = [dict(in_place[0], segment=2)]
        reply = self.server.call({"type": "load", "bucket": 1, "tensors": bad})
        self.assertFalse(reply["ok"])
        self.assertIn("tensor '%s' (#0): segment 2 was not attached (this update attached 2)" % names[0], reply["error"])
        self.assertEqual(shm_mappings(owner.segment), 1)  # Unmapped with the failure.
        self.assertEqual(self.server.call({"type": "abort", "reason": "test"}), {"ok": True})
        _, error = worker.outcome()
        self.assertIsInstance(error, WeightReceiveError)
        self.assertEqual({n: tensor_sha256(self.loaded[n]) for n in names}, {n: tensor_sha256(tensors[n]) for n in names})

    def update(self, attach, tensors, owner):
        """One whole update on a fresh session: attach, one bucket read in place in `owner`'s memory (the attach's first
        registered segment), release, finish; the loader must hold every tensor bit-exact."""
        worker = self.start()
        self.assertEqual(self.server.call(attach), {"ok": True})
        wire = [dict(t, segment=1) for t in owner.pack(tensors)]
        self.assertEqual(self.server.call({"type": "load", "bucket": 0, "tensors": wire}), {"ok": True})
        self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
        self.assertEqual(self.server.call({"type": "finish"}), {"ok": True})
        self.assertIsNone(worker.outcome()[1])
        self.assertEqual({n: tensor_sha256(self.loaded[n]) for n in tensors}, {n: tensor_sha256(tensors[n]) for n in tensors})

    def test_HostMappings_KeptAcrossUpdates_ReplacedWhenTheAttachNamesOthers(self):
        from ckpt_engine_worker import segments

        self.owners = [FakeServer(listen=False), FakeServer(listen=False)]  # Registered memory of other ranks on this host.
        for owner in self.owners:
            self.addCleanup(owner.close)
        tensors = sample_tensors()
        attach = {"type": "attach", "kind": "shm", "handle": self.server.segment, "size": self.server.size, "device_id": "dev-0",
                  "segments": [{"handle": self.owners[0].segment, "size": self.owners[0].size}]}
        with mock.patch.object(segments, "open_shm", wraps=segments.open_shm) as opened:
            self.update(attach, tensors, self.owners[0])
            self.update(attach, tensors, self.owners[0])  # The same segments: nothing mapped again.
            self.assertEqual([c.args[0] for c in opened.call_args_list], [self.server.segment, self.owners[0].segment])
            self.assertEqual((shm_mappings(self.server.segment), shm_mappings(self.owners[0].segment)), (2, 2))

            # The next attach names another owner's segment: the one no longer named is unmapped, the buffer stays.
            other = dict(attach, segments=[{"handle": self.owners[1].segment, "size": self.owners[1].size}])
            self.update(other, tensors, self.owners[1])
            self.assertEqual(opened.call_args_list[-1].args[0], self.owners[1].segment)
            self.assertEqual((shm_mappings(self.owners[0].segment), shm_mappings(self.owners[1].segment)), (1, 2))

            # An attach that fails (a buffer larger than the segment) unmaps everything kept for this socket.
            worker = self.start()
            reply = self.server.call(dict(other, size=self.server.size * 2))
            self.assertFalse(reply["ok"])
            self.assertIn("attach: cannot map shm segment '%s'" % self.server.segment, reply["error"])
            self.assertEqual(self.server.call({"type": "abort", "reason": "test"}), {"ok": True})
            self.assertIsInstance(worker.outcome()[1], WeightReceiveError)
            self.assertEqual((shm_mappings(self.server.segment), shm_mappings(self.owners[1].segment)), (1, 1))

    def test_RegisteredSegment_ViewsAreReadOnly(self):
        from ckpt_engine_worker.segments import open_shm

        owner = FakeServer(listen=False)
        self.addCleanup(owner.close)
        segment = open_shm(owner.segment, owner.size, writable=False)
        self.addCleanup(segment.release)
        self.assertFalse(segment._owner.closed)
        with self.assertRaises(TypeError):
            memoryview(segment._owner)[0] = 1

    def test_LoaderRaises_ErrorTextGoesBack_MappingReleased_AbortEndsIt(self):
        def load(weights):
            raise RuntimeError("no room for %s" % weights[0][0])

        worker = self.start(load=load)
        self.server.attach()
        wire = self.server.pack({"a.weight": torch.ones(4)})
        reply = self.server.call({"type": "load", "bucket": 0, "tensors": wire})
        self.assertFalse(reply["ok"])
        self.assertIn("load of bucket 0: RuntimeError: no room for a.weight (at ", reply["error"])
        self.assertEqual(shm_mappings(self.server.segment), 1)
        later = self.server.call({"type": "release"})
        self.assertEqual((later["ok"], later["error"].startswith("release after a failure: load of bucket 0")), (False, True))
        self.assertEqual(self.server.call({"type": "abort", "reason": "rank 1 failed"}), {"ok": True})
        _, error = worker.outcome()
        self.assertIsInstance(error, WeightReceiveError)
        self.assertNotIsInstance(error, WeightUpdateAborted)
        self.assertIn("no room for a.weight", str(error))

    def test_CudaBufferOfAnotherGpu_IsRefusedBeforeOpening(self):
        # The attach names the buffer's GPU; a worker on another GPU says so instead of opening a foreign handle.
        with mock.patch.object(receiver, "device_uuid", lambda index: "GPU-%08d-0000-0000-0000-000000000000" % index):
            worker = Worker(lambda: receive_update(self.server.ticket, self.copy, self.finish, device=torch.device("cuda", 1), idle_timeout=5))
            worker.start()
            self.server.accept()
            reply = self.server.call({"type": "attach", "kind": "cuda-ipc", "handle": "AAAA", "size": 64,
                                      "device_id": "GPU-00000000-0000-0000-0000-000000000000"})
        self.assertEqual(reply, {"ok": False, "error": "attach: the buffer is on device GPU-00000000-0000-0000-0000-000000000000, "
                                                       "but this worker is on cuda:1 (GPU-00000001-0000-0000-0000-000000000000)"})
        self.server.call({"type": "abort", "reason": "wrong device"})
        _, error = worker.outcome()
        self.assertIsInstance(error, WeightReceiveError)

    def test_Abort_RaisesWithTheReason_AndUnmaps(self):
        worker = self.start()
        self.server.attach()
        self.assertEqual(self.server.call({"type": "abort", "reason": "rank 3 died"}), {"ok": True})
        _, error = worker.outcome()
        self.assertIsInstance(error, WeightUpdateAborted)
        self.assertEqual(str(error), "rank 3 died")
        self.assertEqual(shm_mappings(self.server.segment), 1)

    def test_LoaderKeepsViews_ReleaseFails(self):
        kept = []
        worker = self.start(load=kept.extend)
        self.server.attach()
        self.server.call({"type": "load", "bucket": 0, "tensors": self.server.pack({"x": torch.zeros(2)})})
        reply = self.server.call({"type": "release"})
        self.assertFalse(reply["ok"])
        self.assertIn("1 reference(s) to tensors in segment %s outlived the loader" % self.server.segment, reply["error"])
        self.server.call({"type": "abort", "reason": "x"})
        self.assertIsInstance(worker.outcome()[1], WeightReceiveError)
        kept.clear()
        self.assertEqual(shm_mappings(self.server.segment), 1)

    def test_TensorEndingExactlyAtTheSegmentEnd_Loads(self):
        last = torch.arange(2, dtype=torch.float32) + 1
        worker = self.start()
        self.server.attach()
        wire = self.server.pack({"t": last}, start=self.server.size - 8, checksums=True)
        self.assertEqual(wire[0]["offset"] + wire[0]["nbytes"], self.server.size)
        self.assertEqual(self.server.call({"type": "load", "bucket": 0, "tensors": wire}), {"ok": True})
        self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
        self.assertEqual(self.server.call({"type": "finish"}), {"ok": True})
        self.assertIsNone(worker.outcome()[1])
        self.assertTrue(torch.equal(self.loaded["t"], last))

    def test_BadTensors_AreRejectedByName(self):
        cases = [
            ({"name": "t", "dtype": "F32", "shape": [2], "offset": 65536, "nbytes": 8}, "tensor 't' (#0): bytes [65536, 65544) are outside segment"),
            ({"name": "t", "dtype": "F32", "shape": [2], "offset": 65536 - 7, "nbytes": 8}, "tensor 't' (#0): bytes [65529, 65537) are outside segment"),
            ({"name": "t", "dtype": "F32", "shape": [2], "offset": -1, "nbytes": 8}, "tensor 't' (#0): bytes [-1, 7) are outside segment"),
            ({"name": "t", "dtype": "F32", "shape": [2], "offset": 0, "nbytes": 9}, "tensor 't' (#0): nbytes is 9, dtype F32 and shape [2] need 8"),
            ({"name": "t", "dtype": "Q3", "shape": [2], "offset": 0, "nbytes": 8}, "tensor 't' (#0): unknown dtype 'Q3'"),
            ({"name": "t", "dtype": "F4", "shape": [2], "offset": 0, "nbytes": 1}, "tensor 't' (#0): dtype F4 is not supported by torch"),
            ({"name": "t", "dtype": "F32", "shape": [1], "offset": 0, "nbytes": 4, "sha256": "00" * 32}, "tensor 't' (#0) has sha256 df3f6198"),
            ({"dtype": "F32", "shape": [1], "offset": 0, "nbytes": 4}, "tensor #0 has no name"),
            ({"name": "t", "dtype": "F32", "shape": [1], "offset": 0, "nbytes": 4, "crc32": "xyz"}, "tensor 't' (#0): crc32 'xyz' is not 8 hex digits"),
            ({"name": "t", "dtype": "F32", "shape": [1], "offset": 0, "nbytes": 4, "crc32": 12}, "tensor 't' (#0): crc32 12 is not 8 hex digits"),
            ({"name": "t", "dtype": "F32", "shape": [1], "offset": 0, "nbytes": 4, "crc32": "0000000g"}, "tensor 't' (#0): crc32 '0000000g' is not 8 hex digits"),
        ]
        if not hasattr(torch, "float8_e4m3fn"):
            cases.append(({"name": "t", "dtype": "F8_E4M3", "shape": [2], "offset": 0, "nbytes": 2}, "tensor 't' (#0): dtype F8_E4M3 is not supported by torch"))
        for tensor, expected in cases:
            with self.subTest(expected):
                server = FakeServer()
                try:
                    worker = Worker(lambda: receive_update(server.ticket, self.copy, idle_timeout=5))
                    worker.start()
                    server.accept()
                    server.attach()
                    reply = server.call({"type": "load", "bucket": 4, "tensors": [tensor]})
                    self.assertFalse(reply["ok"])
                    self.assertIn("load of bucket 4: " + expected, reply["error"])
                    server.conn.close()
                    self.assertIsInstance(worker.outcome()[1], WeightReceiveError)
                finally:
                    server.close()

    def test_Crc32_MatchingTensorsLoad_ACorruptedByteFailsNamingTensorAndDevice(self):
        tensors = sample_tensors()
        worker = self.start()
        self.server.attach()
        wire = self.server.pack(tensors, crc32=True)
        self.assertEqual(self.server.call({"type": "load", "bucket": 0, "tensors": wire}), {"ok": True})
        victim = wire[len(wire) // 2]
        self.server.memory[victim["offset"] + victim["nbytes"] - 1] ^= 0x01  # One bit of the tensor's last byte.
        reply = self.server.call({"type": "load", "bucket": 1, "tensors": wire})
        self.assertFalse(reply["ok"])
        self.assertIn("load of bucket 1: tensor '%s' on device 'dev-0' has crc32 " % victim["name"], reply["error"])
        self.assertIn("expected %s (corrupted on the way)" % victim["crc32"], reply["error"])
        self.server.conn.close()
        self.assertIn(victim["name"], str(worker.outcome()[1]))

    def test_OutOfOrder_IsAnError(self):
        worker = self.start()
        reply = self.server.call({"type": "load", "bucket": 0, "tensors": []})
        self.assertEqual(reply, {"ok": False, "error": "'load' out of order before attach: expected attach (or abort)"})
        self.server.conn.close()
        _, error = worker.outcome()
        self.assertIn("out of order", str(error))

    def test_ServerGoesSilent_IdleTimeoutNamesTheStep(self):
        worker = self.start(idle=0.3)
        self.server.attach()
        _, error = worker.outcome()
        self.assertRegex(str(error), r"no message from the parameter server at @ckpt-test-\S+ within 0.3 s after attach, before any bucket \(expected load or release\)")
        self.assertEqual(shm_mappings(self.server.segment), 1)

    def test_Connect_WaitsForTheServerToListen(self):
        late = FakeServer(listen=False)
        self.addCleanup(late.close)
        worker = Worker(lambda: receive_update(late.ticket, self.copy, idle_timeout=5))
        worker.start()
        time.sleep(0.3)
        late.listen()
        late.accept()
        late.attach()
        late.call({"type": "release"})
        late.call({"type": "finish"})
        summary, error = worker.outcome()
        self.assertIsNone(error)
        self.assertEqual(summary.buckets, 0)

    def test_Connect_NobodyListens_FailsAtTheDeadline(self):
        started = time.monotonic()
        with self.assertRaisesRegex(WeightReceiveError, "no parameter server listening at @nobody-here within 0.3 s"):
            receive_update("@nobody-here#" + "0" * 64, self.copy, idle_timeout=0.3)
        self.assertLess(time.monotonic() - started, 3)

    def test_Ticket_BareAddressOrBadSession_IsRefusedSayingWhy(self):
        with self.assertRaisesRegex(ValueError, "is a bare socket address, not a worker ticket"):
            receive_update(self.server.address, self.copy, idle_timeout=0.3)
        with self.assertRaisesRegex(ValueError, r"has a malformed session key \(expected 64 hex digits\)"):
            receive_update(self.server.address + "#xyz", self.copy, idle_timeout=0.3)

    @unittest.skipUnless(os.geteuid() == 0 and os.path.exists("/usr/bin/setpriv"), "needs root and setpriv to run a squatter as nobody")
    def test_AnotherUserSquatsTheSocketName_IsRefusedBeforeTheSessionKeyIsSent(self):
        address = "@" + unique("ckpt-test-squat")
        squatter = subprocess.Popen(
            ["/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-u", "-c",
             "import socket, sys\n"
             "l = socket.socket(socket.AF_UNIX); l.bind('\\0' + sys.argv[1][1:]); l.listen(1); print('listening', flush=True)\n"
             "c, _ = l.accept(); c.settimeout(10)\n"
             "try:\n    got = c.recv(65536)\nexcept ConnectionResetError:\n    got = b''\n"
             "print('got %r' % got, flush=True)\n", address],
            stdout=subprocess.PIPE, text=True, cwd="/")
        self.addCleanup(squatter.wait, 10)
        self.addCleanup(squatter.kill)
        self.assertEqual(squatter.stdout.readline().strip(), "listening")
        with self.assertRaisesRegex(WeightReceiveError, r"the process listening at %s \(pid \d+\) runs as uid 65534, not as this process's uid 0: refused" % address):
            receive_update(address + "#" + "a" * 64, self.copy, idle_timeout=5)
        self.assertEqual(squatter.stdout.readline().strip(), "got b''")
        self.assertEqual(self.loaded, {})

    def test_FinishHookRaises_IsReported(self):
        def finish():
            raise ValueError("repack failed")

        worker = self.start(finish=finish)
        self.server.attach()
        self.server.call({"type": "release"})
        reply = self.server.call({"type": "finish"})
        self.assertIn("post-load hook: ValueError: repack failed", reply["error"])
        self.server.conn.close()
        self.assertIn("repack failed", str(worker.outcome()[1]))


class StateDictLoaderTests(unittest.TestCase):
    def test_CopiesInPlace_AndNamesMismatches(self):
        model = torch.nn.Linear(2, 3)
        weight = model.weight
        load = state_dict_loader(model)
        load([("weight", torch.full((3, 2), 2.0)), ("bias", torch.zeros(3))])
        self.assertIs(model.weight, weight)
        self.assertEqual(weight.sum().item(), 12.0)
        with self.assertRaisesRegex(KeyError, "tensor 'nope' is not in the model"):
            load([("nope", torch.zeros(1))])
        with self.assertRaisesRegex(ValueError, r"tensor 'bias' is torch.float64 \(3,\), the model has torch.float32 \(3,\)"):
            load([("bias", torch.zeros(3, dtype=torch.float64))])


if __name__ == "__main__":
    unittest.main()
