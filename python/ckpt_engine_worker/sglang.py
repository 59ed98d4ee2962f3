"""SGLang: a drop-in for the worker-side function SGLang's checkpoint-engine integration calls from its
model runner, `update_weights_from_ipc(zmq_ctx, handle, device_id=..., run=model.load_weights,
post_hook=...)`, receiving over this project's protocol (the handle is our ticket; no ZeroMQ).

SGLang imports it as `checkpoint_engine.worker.update_weights_from_ipc`. Start SGLang with this
package's shim first on the path, and it gets this one:

    PYTHONPATH=$(python -m ckpt_engine_worker.sglang --shim-path) python -m sglang.launch_server \\
        --model-path MODEL --load-format dummy --wait-for-initial-weights ...
    ckpt-engine update --engine sglang --endpoint http://HOST:PORT ...
"""

import os
import sys
import weakref

from .receiver import receive_update
from .shard_aware import ShardAware

_shards = weakref.WeakKeyDictionary()


def update_weights_from_ipc(zmq_ctx, ticket, device_id=None, *, run, post_hook=None, shard_aware=True, idle_timeout=None):
    """Receives one update with `ticket` (what `ckpt-engine update --engine sglang` posted for this
    device), loading every bucket with `run(weights)` and running `post_hook()` at the end. zmq_ctx is
    accepted for SGLang's call and not used. device_id: the CUDA device index of a "cuda-ipc" buffer.
    shard_aware: when `run` is a bound `load_weights` of a torch module, its loader is recorded after
    the first update and later updates carry only what it keeps. Returns the summary dict."""
    import torch

    device = torch.device("cuda", device_id) if isinstance(device_id, int) and torch.cuda.is_available() else None
    model = getattr(run, "__self__", None)
    if not shard_aware or not isinstance(model, torch.nn.Module):
        return receive_update(ticket, run, post_hook, device=device, idle_timeout=idle_timeout).as_dict()
    shard = _shards.get(model)
    if shard is None:
        shard = _shards[model] = ShardAware([(model, run)])
    return shard.receive(ticket, post_hook, device=device, idle_timeout=idle_timeout).as_dict()


def shim_path():
    """The folder holding a `checkpoint_engine.worker` module that is this one (for PYTHONPATH)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sglang_shim")


if __name__ == "__main__":
    if sys.argv[1:] != ["--shim-path"]:
        sys.exit("usage: python -m ckpt_engine_worker.sglang --shim-path")
    print(shim_path())
