"""A vLLM worker extension: start vLLM with
`--worker-extension-cls ckpt_engine_worker.vllm.WorkerExtension`, and the parameter server's
update calls `update_weights_from_ipc` on every worker through `/collective_rpc`.

vLLM mixes this class into its GPU worker, so `self` is the worker: `self.device`,
`self.local_rank`, `self.rank`, `self.model_runner` (whose `model` has `load_weights`, and whose
`drafter.model`, with speculative decoding, is the draft model) and `self.model_config`.
"""

import os

from .cuda import device_uuid
from .receiver import receive_update
from .shard_aware import ShardAware

DEVICE_ID_VARIABLE = "CKPT_ENGINE_DEVICE_ID"


class WorkerExtension:
    """Receives weight updates from a CheckpointEngine parameter server into a vLLM worker."""

    def update_weights_from_ipc(self, tickets, idle_timeout=None, shard_aware=True):
        """Receives one update from the parameter server of this worker's device.

        tickets: {device_id: "socket#session"} for every device of the engine (the map the parameter
            server posts); this worker takes the entry of its own device id.
        Loads every bucket into the model (and the drafter's model, when there is one), then runs
        vLLM's post-load processing. Returns a summary dict; raises with the reason on failure.
        shard_aware: after the first update (which shows the checkpoint's layout), the models' own
            load_weights are recorded once on stand-in tensors and every later update declares only
            what this worker keeps (see recorder.py); False receives everything every time.
        """
        device_id = self.ckpt_engine_device_id()
        ticket = tickets.get(device_id) if isinstance(tickets, dict) else None
        if not ticket:
            known = ", ".join(sorted(tickets)) if isinstance(tickets, dict) else type(tickets).__name__
            raise LookupError("device '%s' (this worker) is not in the update's ticket map (which has %s); set %s "
                              "to the id the parameter server uses" % (device_id, known or "nothing", DEVICE_ID_VARIABLE))
        device = getattr(self, "device", None)
        cuda = device is not None and getattr(device, "type", None) == "cuda"
        device = device if cuda else None
        if not shard_aware:
            return receive_update(ticket, self._ckpt_engine_load, self._ckpt_engine_finish, device=device, idle_timeout=idle_timeout).as_dict()
        shard = getattr(self, "_ckpt_engine_shard", None)
        if shard is None:
            shard = self._ckpt_engine_shard = ShardAware([(m, m.load_weights) for m in self._ckpt_engine_models()])
        return shard.receive(ticket, self._ckpt_engine_finish, device=device, idle_timeout=idle_timeout).as_dict()

    def ckpt_engine_device_id(self):
        """This worker's device id: $CKPT_ENGINE_DEVICE_ID with {local_rank} and {rank} filled in when
        set (the host backend, or any explicit naming), else the CUDA device's "GPU-<uuid>"."""
        override = os.environ.get(DEVICE_ID_VARIABLE)
        local_rank = getattr(self, "local_rank", 0)
        if override:
            return override.replace("{local_rank}", str(local_rank)).replace("{rank}", str(getattr(self, "rank", local_rank)))
        device = getattr(self, "device", None)
        if device is None or getattr(device, "type", None) != "cuda":
            raise LookupError("this worker is on %s, which has no device id of its own: set %s (e.g. 'host-<machine>-{local_rank}')"
                              % (device, DEVICE_ID_VARIABLE))
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        return device_uuid(index)

    def _ckpt_engine_models(self):
        runner = self.model_runner
        models = [runner.model]
        drafter = getattr(getattr(runner, "drafter", None), "model", None)
        if drafter is not None and hasattr(drafter, "load_weights"):
            models.append(drafter)
        return models

    def _ckpt_engine_load(self, weights):
        # Each model's load_weights picks (and shards) the names it knows; it copies out of the views.
        for model in self._ckpt_engine_models():
            model.load_weights(weights=weights)

    def _ckpt_engine_finish(self):
        """vLLM's post-load processing (quantization repacking and the like), for the model and the
        drafter, under the worker's vLLM config; skipped where vLLM is not importable."""
        try:
            from vllm.config import set_current_vllm_config
            from vllm.model_executor.model_loader.utils import process_weights_after_loading
        except ImportError:
            return
        runner = self.model_runner
        vllm_config = getattr(runner, "vllm_config", None) or getattr(self, "vllm_config", None)
        model_config = getattr(self, "model_config", None) or runner.model_config
        speculative = getattr(vllm_config, "speculative_config", None)
        configs = [model_config, getattr(speculative, "draft_model_config", None) or model_config]
        for model, config in zip(self._ckpt_engine_models(), configs):
            with set_current_vllm_config(vllm_config):
                process_weights_after_loading(model, config, self.device)
