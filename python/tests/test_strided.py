"""Parts in place ("pitch"): a receiver that takes strided parts gets a column slice as a strided view of the
segment, bounded like any tensor (every byte its rows touch inside the segment), and the shard-aware
loader copies it through its strides into the parameters."""

import unittest

import torch

import standin_engine as engine
from ckpt_engine_worker import receive_update
from ckpt_engine_worker import recorder
from ckpt_engine_worker.shard_aware import ShardAware
from support import FakeServer, Worker
from test_recorder import declared_bytes, same_state

SIZE = 1 << 16
WHOLE = torch.arange(32, dtype=torch.float32).reshape(4, 8)  # Rows of 32 bytes.
COLUMNS = {"dim": 1, "slices": [[3, 2]], "full_shape": [4, 8]}  # 4 rows of 8 bytes, 32 apart.


def part(offset, pitch=32, **extra):
    return dict({"name": "o.weight", "dtype": "F32", "shape": [4, 2], "offset": offset, "nbytes": 32, "part": COLUMNS, "pitch": pitch}, **extra)


class StridedReceiveTests(unittest.TestCase):
    def setUp(self):
        self.server = FakeServer(size=SIZE)
        self.addCleanup(self.server.close)
        self.loaded = {}

    def copy(self, weights):
        for name, t in weights:
            self.loaded[name] = (t.clone(), t.is_contiguous(), dict(weights.parts))

    def start(self, strided=True):
        worker = Worker(lambda: receive_update(self.server.ticket, self.copy, idle_timeout=5, strided=strided))
        worker.start()
        self.server.accept()
        self.assertEqual(self.server.takes_strided, strided)
        self.assertEqual(self.server.attach(), {"ok": True})
        return worker

    def write(self, offset, tensor):
        raw = tensor.contiguous().reshape(-1).view(torch.uint8)
        torch.frombuffer(self.server.memory, dtype=torch.uint8)[offset:offset + raw.numel()].copy_(raw)

    def load(self, tensor, strided=True):
        """Loads one tensor description and returns the reply; a refused one ends the update."""
        worker = self.start(strided)
        reply = self.server.call({"type": "load", "bucket": 0, "tensors": [tensor]})
        if reply["ok"]:
            self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
            self.assertEqual(self.server.call({"type": "finish"}), {"ok": True})
            self.assertIsNone(worker.outcome()[1])
        else:
            self.server.call({"type": "abort", "reason": "test"})
            self.assertIsNotNone(worker.outcome()[1])
        return reply

    def test_ColumnSliceInPlace_IsAStridedViewOfTheSegment_CopiedBitExact(self):
        self.write(1024, WHOLE)
        self.assertEqual(self.load(part(1024 + 12)), {"ok": True})
        tensor, contiguous, parts = self.loaded["o.weight"]
        self.assertFalse(contiguous)
        self.assertTrue(torch.equal(tensor, WHOLE[:, 3:5]))
        self.assertEqual(parts["o.weight"], (1, [(3, 2)], (4, 8)))

    def test_LastRowEndingAtTheSegmentEnd_Loads(self):
        offset = SIZE - 3 * 32 - 8
        for r in range(4):
            self.write(offset + r * 32, WHOLE[r, 3:5])
        self.assertEqual(self.load(part(offset)), {"ok": True})
        self.assertTrue(torch.equal(self.loaded["o.weight"][0], WHOLE[:, 3:5]))

    def test_LastRowOneBytePastTheSegmentEnd_IsRefused(self):
        offset = SIZE - 3 * 32 - 8 + 1
        reply = self.load(part(offset))
        self.assertEqual(reply["error"], "load of bucket 0: tensor 'o.weight' (#0): bytes [%d, %d) (4 rows of 8 bytes, 32 bytes apart) are outside segment %s of %d bytes"
                         % (offset, SIZE + 1, self.server.segment, SIZE))

    def test_PitchesThatCannotBeRows_AreRefused(self):
        cases = [
            (part(0, pitch=7), "pitch 7 is smaller than a row of the part (8 bytes)"),
            (part(0, pitch=0), "pitch 0 must be a positive integer"),
            (part(0, pitch=True), "pitch True must be a positive integer"),
            (part(0, pitch=(1 << 63) // 2), "4 rows %d bytes apart overflow a 64-bit offset" % ((1 << 63) // 2)),
            (part(0, pitch=(1 << 61)), None),  # Fits 64 bits, but the rows run past the segment.
            (dict(part(0), part=None), "pitch 32 comes without a part"),
            (dict(part(0), shape=[4, 4], nbytes=64, part={"dim": 1, "slices": [[0, 2], [5, 2]], "full_shape": [4, 8]}),
             "pitch 32 comes with a part of 2 slices (it describes one)"),
            (part(0, crc32="00000000"), "a part in place carries no checksum (checksums cover whole tensors)"),
        ]
        for tensor, expected in cases:
            with self.subTest(expected=expected):
                reply = self.load(tensor)
                self.assertFalse(reply["ok"])
                if expected is None:
                    self.assertIn("are outside segment", reply["error"])
                else:
                    self.assertEqual(reply["error"], "load of bucket 0: tensor 'o.weight' (#0): " + expected)

    def test_PitchToAReceiverThatTakesPackedPartsOnly_IsRefused(self):
        reply = self.load(part(0), strided=False)
        self.assertEqual(reply["error"], "load of bucket 0: tensor 'o.weight' (#0): pitch 32 sent to a worker that takes packed parts only "
                                         "(its hello did not say \"strided\")")

    def test_Translate_WithThePartsStrides_ReadsInPlace(self):
        # Columns [3, 5) of a [4, 8] tensor, in place: the part's strides are the whole tensor's.
        self.assertEqual(recorder.translate((3, [4, 2], [8, 1]), [4, 8], 1, [(3, 2)], part_strides=[8, 1]), (0, [4, 2], [8, 1]))
        self.assertEqual(recorder.translate((3, [4, 2], [8, 1]), [4, 8], 1, [(3, 2)]), (0, [4, 2], [2, 1]))


class StridedShardAwareTests(unittest.TestCase):
    """The stand-in engine's shard-aware update with column slices handed in place: every rank ends bit-identical to
    the engine loaded from the full checkpoint."""

    def update(self, shard, server, tensors):
        w = Worker(lambda: shard.receive(server.ticket, idle_timeout=10))
        w.start()
        server.accept()
        self.assertTrue(server.takes_strided)
        self.assertEqual(server.attach(), {"ok": True})
        wire = server.pack(tensors, wants=server.wants, in_place=True)
        self.assertEqual(server.call({"type": "load", "bucket": 0, "tensors": wire}), {"ok": True})
        self.assertEqual(server.call({"type": "release"}), {"ok": True})
        self.assertEqual(server.call({"type": "finish"}), {"ok": True})
        summary, error = w.outcome()
        self.assertIsNone(error)
        return summary, sum(1 for t in wire if "pitch" in t)

    def test_TensorParallel2And4_ColumnSlicesInPlace_StateEqualsFullLoad(self):
        first, second = engine.checkpoint(seed=7), engine.checkpoint(seed=8)
        for tp in (2, 4):
            for rank in range(tp):
                with self.subTest(tp=tp, rank=rank):
                    server = FakeServer(size=4 << 20)
                    self.addCleanup(server.close)
                    model = engine.Model(rank, tp)
                    shard = ShardAware([(model, model.load_weights)])
                    self.update(shard, server, first)
                    with self.assertLogs("ckpt_engine_worker", "WARNING"):
                        self.assertIsNotNone(shard.wants())
                    sharded, in_place = self.update(shard, server, second)
                    self.assertGreater(in_place, 0)
                    self.assertEqual(shard.parts_in_place, in_place)
                    self.assertEqual(sharded.bytes, declared_bytes(second, server.wants))
                    reference = engine.Model(rank, tp)
                    reference.load_weights(list(second.items()))
                    self.assertEqual([], same_state(model, reference))


if __name__ == "__main__":
    unittest.main()
