import os
import subprocess
import sys
import unittest

import torch

import standin_engine as engine
from support import FakeServer, Worker


class SGLangShapedRunner:
    """Shaped like SGLang's checkpoint-engine worker extension (written here): it imports
    `checkpoint_engine.worker.update_weights_from_ipc` and calls it with a ZeroMQ context, its device's
    handle, the device index, the model's load_weights and a post-load hook."""

    def __init__(self, model):
        self.model, self.post_loads = model, 0

    def update_weights_from_ipc(self, handles):
        from checkpoint_engine.worker import update_weights_from_ipc

        return update_weights_from_ipc(None, handles["dev-0"], device_id=None, run=self.model.load_weights, post_hook=self.post_load)

    def post_load(self):
        self.post_loads += 1


class SGLangTests(unittest.TestCase):
    def test_ShimPath_ProvidesCheckpointEngineWorker(self):
        path = subprocess.run([sys.executable, "-m", "ckpt_engine_worker.sglang", "--shim-path"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.strip()
        sys.path.insert(0, path)
        self.addCleanup(sys.path.remove, path)
        import checkpoint_engine.worker
        from ckpt_engine_worker import sglang

        self.assertIs(checkpoint_engine.worker.update_weights_from_ipc, sglang.update_weights_from_ipc)

    def test_SGLangShapedCaller_TwoUpdates_SecondIsShardAware(self):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ckpt_engine_worker", "sglang_shim")
        sys.path.insert(0, path)
        self.addCleanup(sys.path.remove, path)
        model = engine.Model(1, 2)
        runner = SGLangShapedRunner(model)
        server = FakeServer(size=1 << 20)
        self.addCleanup(server.close)
        for seed in (4, 5):
            tensors = engine.checkpoint(seed)
            w = Worker(lambda: runner.update_weights_from_ipc({"dev-0": server.ticket}))
            w.start()
            server.accept()
            self.assertEqual(server.attach(), {"ok": True})
            wire = server.pack(tensors, wants=server.wants)
            for m in ({"type": "load", "bucket": 0, "tensors": wire}, {"type": "release"}, {"type": "finish"}):
                self.assertEqual(server.call(m), {"ok": True})
            summary, error = w.outcome()
            self.assertIsNone(error)
            reference = engine.Model(1, 2)
            reference.load_weights(list(tensors.items()))
            self.assertTrue(all(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
                                for a, b in zip(model.state_dict().values(), reference.state_dict().values())))
        self.assertIsNotNone(server.wants)  # the second update declared what rank 1 of 2 keeps
        self.assertLess(summary["bytes"], sum(t.numel() * t.element_size() for t in tensors.values()) * 0.6)
        self.assertEqual(runner.post_loads, 2)


if __name__ == "__main__":
    unittest.main()
