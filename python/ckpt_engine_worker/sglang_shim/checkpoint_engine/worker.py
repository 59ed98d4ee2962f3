"""The worker-side function SGLang imports, served by ckpt_engine_worker (see ckpt_engine_worker.sglang)."""

from ckpt_engine_worker.sglang import update_weights_from_ipc

__all__ = ["update_weights_from_ipc"]
