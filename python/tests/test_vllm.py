import contextlib
import os
import sys
import types
import unittest
from types import SimpleNamespace
from unittest import mock

import torch

from ckpt_engine_worker import vllm as extension
from support import FakeServer, Worker


class Model(torch.nn.Module):
    """Stands in for a vLLM model: load_weights(weights=...) takes the names it knows."""

    def __init__(self, names):
        super().__init__()
        for n in names:
            self.register_buffer(n, torch.zeros(4))
        self.calls = 0

    def load_weights(self, weights):
        self.calls += 1
        with torch.no_grad():
            for name, tensor in weights:
                if hasattr(self, name):
                    getattr(self, name).copy_(tensor)


class StandInWorker(extension.WorkerExtension):
    """The attributes of vLLM's GPU worker that the extension uses, on the CPU."""

    def __init__(self, local_rank=0, drafter=None, speculative=None):
        self.device = torch.device("cpu")
        self.local_rank = self.rank = local_rank
        self.model_config = SimpleNamespace(name="target config")
        self.model_runner = SimpleNamespace(
            model=Model(["a", "b"]),
            drafter=SimpleNamespace(model=drafter) if drafter is not None else None,
            vllm_config=SimpleNamespace(speculative_config=speculative),
            model_config=self.model_config)


@contextlib.contextmanager
def fake_vllm(calls):
    """vllm.config.set_current_vllm_config and ...model_loader.utils.process_weights_after_loading, recording calls."""

    @contextlib.contextmanager
    def set_current_vllm_config(config):
        calls.append(("enter", config))
        yield
        calls.append(("exit", config))

    modules = {name: types.ModuleType(name) for name in
               ("vllm", "vllm.config", "vllm.model_executor", "vllm.model_executor.model_loader", "vllm.model_executor.model_loader.utils")}
    modules["vllm.config"].set_current_vllm_config = set_current_vllm_config
    modules["vllm.model_executor.model_loader.utils"].process_weights_after_loading = \
        lambda model, config, device: calls.append(("process", model, config, device))
    with mock.patch.dict(sys.modules, modules):
        yield


class WorkerExtensionTests(unittest.TestCase):
    def setUp(self):
        self.server = FakeServer()
        self.addCleanup(self.server.close)
        patcher = mock.patch.dict(os.environ, {extension.DEVICE_ID_VARIABLE: "host-test-{local_rank}"})
        patcher.start()
        self.addCleanup(patcher.stop)

    def update(self, worker, sockets=None):
        sockets = sockets or {"host-test-0": "@elsewhere#" + "0" * 64, "host-test-1": self.server.ticket}
        w = Worker(lambda: worker.update_weights_from_ipc(sockets, idle_timeout=5))
        w.start()
        self.server.accept()
        self.server.attach()
        wire = self.server.pack({"a": torch.full((4,), 1.5), "b": torch.arange(4.0), "d": torch.full((4,), 9.0)})
        self.assertEqual(self.server.call({"type": "load", "bucket": 0, "tensors": wire}), {"ok": True})
        self.assertEqual(self.server.call({"type": "release"}), {"ok": True})
        self.assertEqual(self.server.call({"type": "finish"}), {"ok": True})
        result, error = w.outcome()
        if error is not None:
            raise error
        return result

    def test_Update_PicksItsOwnSocket_LoadsTheModel(self):
        worker = StandInWorker(local_rank=1)
        result = self.update(worker)
        self.assertEqual((result["device_id"], result["buckets"], result["tensors"]), ("dev-0", 1, 3))
        model = worker.model_runner.model
        self.assertEqual(model.a.tolist(), [1.5] * 4)
        self.assertEqual(model.b.tolist(), [0.0, 1.0, 2.0, 3.0])

    def test_Update_WithADrafter_LoadsBoth_AndPostProcessesBothUnderTheConfig(self):
        drafter = Model(["d"])
        draft_config = SimpleNamespace(name="draft config")
        worker = StandInWorker(local_rank=1, drafter=drafter, speculative=SimpleNamespace(draft_model_config=draft_config))
        calls = []
        with fake_vllm(calls):
            self.update(worker)
        self.assertEqual(drafter.d.tolist(), [9.0] * 4)
        self.assertEqual(worker.model_runner.model.calls, 1)
        vllm_config = worker.model_runner.vllm_config
        self.assertEqual(calls, [
            ("enter", vllm_config), ("process", worker.model_runner.model, worker.model_config, worker.device), ("exit", vllm_config),
            ("enter", vllm_config), ("process", drafter, draft_config, worker.device), ("exit", vllm_config)])

    def test_Update_NgramDrafter_WithoutAModel_IsSkipped(self):
        worker = StandInWorker(local_rank=1)
        worker.model_runner.drafter = SimpleNamespace()  # n-gram proposers hold no model
        calls = []
        with fake_vllm(calls):
            self.update(worker)
        self.assertEqual([c[0] for c in calls], ["enter", "process", "exit"])

    def test_Update_DeviceNotInTheMap_SaysWhichIdsThereAre(self):
        with self.assertRaisesRegex(LookupError, r"device 'host-test-0' \(this worker\) is not in the update's ticket map \(which has a, b\)"):
            StandInWorker().update_weights_from_ipc({"b": "@x", "a": "@y"})

    def test_DeviceId_OnCpuWithoutOverride_AsksForIt(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            with self.assertRaisesRegex(LookupError, "set CKPT_ENGINE_DEVICE_ID"):
                StandInWorker().ckpt_engine_device_id()

    def test_DeviceId_OnCuda_IsTheDeviceUuid(self):
        worker = StandInWorker()
        worker.device = torch.device("cuda", 3)
        with mock.patch.dict(os.environ, {}, clear=True), mock.patch.object(extension, "device_uuid", lambda i: "GPU-uuid-of-%d" % i):
            self.assertEqual(worker.ckpt_engine_device_id(), "GPU-uuid-of-3")

    def test_DeviceId_OverrideFillsRank(self):
        worker = StandInWorker(local_rank=2)
        worker.rank = 10
        with mock.patch.dict(os.environ, {extension.DEVICE_ID_VARIABLE: "n{rank}-{local_rank}"}):
            self.assertEqual(worker.ckpt_engine_device_id(), "n10-2")


if __name__ == "__main__":
    unittest.main()
