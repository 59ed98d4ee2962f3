import unittest

import torch

import standin_engine as engine
from ckpt_engine_worker import recorder
from ckpt_engine_worker.shard_aware import ShardAware
from support import FakeServer, Worker


def raw(t):
    return t.reshape(-1).view(torch.uint8) if t.numel() else t


def layout_of(tensors):
    return {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}


def same_state(a, b):
    """Names of the tensors whose bytes differ between two modules' state_dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [n for n in sa if sa[n].dtype != sb[n].dtype or not torch.equal(raw(sa[n]), raw(sb[n]))]


def declared_bytes(tensors, wants):
    total = 0
    for name, t in tensors.items():
        want = wants["tensors"].get(name, wants["others"])
        if want == "whole":
            total += t.numel() * t.element_size()
        elif want != "none":
            total += t.numel() // t.shape[want["dim"]] * sum(n for _, n in want["slices"]) * t.element_size()
    return total


class RecorderTests(unittest.TestCase):
    def test_StandInEngine_WantsAreEachRanksShards(self):
        checkpoint = engine.checkpoint(seed=3)
        with self.assertLogs("ckpt_engine_worker", "WARNING") as logs:
            model = engine.Model(3, 4)
            wants = recorder.record(model, model.load_weights, layout_of(checkpoint)).wants()
        p = "model.layers.%d."
        # Rank 3 of 4: its query heads, the K/V head it shares with rank 2, its vocabulary rows (58 real + 6 padding).
        self.assertEqual(wants[p % 0 + "self_attn.q_proj.weight"], {"dim": 0, "slices": [[48, 16]]})
        self.assertEqual(wants[p % 1 + "self_attn.k_proj.weight"], {"dim": 0, "slices": [[8, 8]]})
        self.assertEqual(wants[p % 0 + "self_attn.o_proj.weight"], {"dim": 1, "slices": [[48, 16]]})
        self.assertEqual(wants[p % 0 + "mlp.up_proj.weight"], {"dim": 0, "slices": [[72, 24]]})
        self.assertEqual(wants[p % 0 + "mlp.down_proj.weight"], {"dim": 1, "slices": [[72, 24]]})
        self.assertEqual(wants["lm_head.weight"], {"dim": 0, "slices": [[192, 58]]})
        self.assertEqual(wants[p % 1 + "mlp.shared_expert.fc_in.weight_scale_inv"], {"dim": 0, "slices": [[3, 1]]})
        self.assertEqual(wants[p % 1 + "mlp.shared_expert.fc_out.weight_scale_inv"], {"dim": 1, "slices": [[3, 1]]})
        self.assertEqual(wants[p % 1 + "mlp.experts.3.up_proj.weight"], "whole")
        self.assertEqual(wants[p % 1 + "mlp.experts.2.up_proj.weight"], "none")
        self.assertEqual(wants[p % 1 + "self_attn.rotary_emb.inv_freq"], "none")
        self.assertEqual(wants["model.norm.weight"], "whole")
        # The loader that computes on its tensor: kept whole, and said so in one log line.
        self.assertEqual(wants[p % 1 + "mlp.gate.e_score_correction_bias"], "whole")
        self.assertEqual(logs.output, ["WARNING:ckpt_engine_worker:shard-aware: tensor 'model.layers.1.mlp.gate.e_score_correction_bias' "
                                       "is kept whole: the loader used 'mul' on it"])

    def test_Record_TouchesNoData(self):
        checkpoint = engine.checkpoint(seed=3)
        model = engine.Model(1, 2)
        model.load_weights(list(checkpoint.items()))
        before = {n: t.clone() for n, t in model.state_dict().items()}
        seen = []

        def load(weights):
            def spy():
                for name, t in weights:
                    seen.append((name, t))
                    yield name, t
            model.load_weights(spy())

        recording = recorder.record(model, load, layout_of(checkpoint))
        self.assertEqual({n for n, _ in seen}, set(checkpoint))
        self.assertTrue(all(t.is_meta for _, t in seen), "stand-ins are meta tensors: no bytes behind them")
        self.assertEqual([], [n for n, t in model.state_dict().items() if not torch.equal(raw(before[n]), raw(t))])
        self.assertEqual(sum(len(s) for s in recording.sinks.values()), 29)  # copies recorded (and not made): 29 for rank 1 of 2
        self.assertGreater(recording.views, 0)

    def test_LoaderRaises_TensorKeptWhole_OthersStillRecorded(self):
        checkpoint = {"a": torch.zeros(4, 2), "b": torch.zeros(4, 2), "c": torch.zeros(4, 2)}
        model = torch.nn.Module()
        model.a, model.c = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2, 2))

        def load(weights):
            for name, w in weights:
                if name == "b":
                    raise KeyError("no parameter b")
                getattr(model, name).data.copy_(w[2:])

        wants = recorder.record(model, load, layout_of(checkpoint)).wants()
        self.assertEqual(wants, {"a": {"dim": 0, "slices": [[2, 2]]}, "b": "whole", "c": {"dim": 0, "slices": [[2, 2]]}})

    def test_ModelThatCannotBeRecorded_DeclaresNothing_AndSaysWhy(self):
        # Not a torch Module (no state_dict(keep_vars=...)): the worker keeps receiving whole tensors.
        class Plain:
            def __init__(self):
                self.weights = {"a": torch.zeros(4, 2)}

            def state_dict(self):
                return self.weights

        model = Plain()
        shard = ShardAware([(model, lambda weights: None)])
        shard.layout = layout_of(model.weights)
        with self.assertLogs("ckpt_engine_worker", "WARNING") as logs:
            self.assertIsNone(shard.wants())
        self.assertIn("the loaders cannot be recorded (TypeError", logs.output[0])
        self.assertIsNone(shard.wants())  # Not tried again.

    def test_Translate_ViewOutsideItsSlice_IsNone(self):
        self.assertEqual(recorder.translate((2 * 3, [2, 3], [3, 1]), [4, 3], 0, [(2, 2)]), (0, [2, 3], [3, 1]))
        self.assertEqual(recorder.translate((2, [4], [3]), [4, 3], 1, [(0, 1), (2, 1)]), (1, [4], [2]))
        self.assertIsNone(recorder.translate((0, [4, 3], [3, 1]), [4, 3], 0, [(2, 2)]))


class ShardAwareUpdateTests(unittest.TestCase):
    """Two updates through the worker protocol: the first delivers everything and shows the layout, the
    second declares the recorded wants and delivers only them (the double cuts parts as the parameter
    server does); every rank ends bit-identical to the engine loaded from the full checkpoint."""

    def update(self, shard, server, tensors):
        w = Worker(lambda: shard.receive(server.ticket, idle_timeout=10))
        w.start()
        server.accept()
        self.assertEqual(server.attach(), {"ok": True})
        wire = server.pack(tensors, wants=server.wants)
        self.assertEqual(server.call({"type": "load", "bucket": 0, "tensors": wire}), {"ok": True})
        self.assertEqual(server.call({"type": "release"}), {"ok": True})
        self.assertEqual(server.call({"type": "finish"}), {"ok": True})
        summary, error = w.outcome()
        self.assertIsNone(error)
        return summary

    def test_TensorParallel2And4_SecondUpdateReceivesOnlyWants_StateEqualsFullLoad(self):
        first, second = engine.checkpoint(seed=5), engine.checkpoint(seed=6)
        for tp in (2, 4):
            for rank in range(tp):
                with self.subTest(tp=tp, rank=rank):
                    server = FakeServer(size=1 << 20)
                    self.addCleanup(server.close)
                    model = engine.Model(rank, tp)
                    shard = ShardAware([(model, model.load_weights)])
                    full = self.update(shard, server, first)
                    self.assertIsNone(server.wants)
                    self.assertEqual(full.bytes, sum(t.numel() * t.element_size() for t in first.values()))
                    with self.assertLogs("ckpt_engine_worker", "WARNING"):  # the loader that computes: one line
                        self.assertIsNotNone(shard.wants())
                    sharded = self.update(shard, server, second)
                    self.assertEqual(server.wants, shard.declared)
                    self.assertEqual(sharded.bytes, declared_bytes(second, server.wants))
                    self.assertEqual(sharded.bytes, shard.wanted_bytes())
                    self.assertLess(sharded.bytes, full.bytes * 0.75)
                    reference = engine.Model(rank, tp)
                    reference.load_weights(list(second.items()))
                    self.assertEqual([], same_state(model, reference))

    def test_APrepareFirst_LeavesTheLayoutUnseen_TheFirstUpdateStillRecordsIt(self):
        server = FakeServer(size=1 << 20)
        self.addCleanup(server.close)
        model = engine.Model(0, 2)
        shard = ShardAware([(model, model.load_weights)])
        w = Worker(lambda: shard.receive(server.ticket, idle_timeout=10))
        w.start()
        server.accept()
        attach = {"type": "attach", "kind": "shm", "handle": server.segment, "size": server.size, "device_id": "dev-0", "prepare": True}
        self.assertEqual(server.call(attach), {"ok": True})
        self.assertEqual(server.call({"type": "release"}), {"ok": True})
        self.assertEqual(w.outcome()[0].buckets, 0)
        self.assertIsNone(shard.wants())  # Nothing seen yet: the next update declares nothing and is recorded.
        self.update(shard, server, engine.checkpoint(seed=5))
        self.assertIsNone(server.wants)
        with self.assertLogs("ckpt_engine_worker", "WARNING"):
            self.assertIsNotNone(shard.wants())

    def test_BadPart_FailsTheLoadNamingTheTensor(self):
        server = FakeServer()
        self.addCleanup(server.close)
        w = Worker(lambda: ShardAware([]).receive(server.ticket, idle_timeout=5))
        w.start()
        server.accept()
        server.attach()
        wire = server.pack({"x": torch.zeros(2, 4)})
        wire[0]["part"] = {"dim": 0, "slices": [[0, 3]], "full_shape": [6, 4]}
        reply = server.call({"type": "load", "bucket": 0, "tensors": wire})
        self.assertEqual(reply["ok"], False)
        self.assertIn("tensor 'x' (#0): part of slices [[0, 3]] along dimension 0 of [6, 4] has shape [3, 4], not [2, 4]", reply["error"])
        server.call({"type": "abort", "reason": "test"})
        self.assertIsNotNone(w.outcome()[1])


if __name__ == "__main__":
    unittest.main()
