"""Receiving side of CheckpointEngine weight updates, for vLLM and any PyTorch inference engine.

`receive_update(ticket, load, finish)` receives one update (the ticket, "socket#session", comes with each update); `state_dict_loader(module)` is a
loader for a plain torch module; `ckpt_engine_worker.vllm.WorkerExtension` is the vLLM worker
extension; `serve(model)` gives a plain PyTorch engine the HTTP endpoint the update drives;
`ckpt_engine_worker.sglang` is the drop-in for SGLang. Only the standard library and torch are used.
"""

from .protocol import address_for
from .receiver import ReceiveSummary, WeightReceiveError, WeightUpdateAborted, receive_update

__all__ = ["ReceiveSummary", "WeightReceiveError", "WeightUpdateAborted", "address_for", "receive_update", "serve", "state_dict_loader"]


def serve(model, port=8000, **options):
    """Serves /health, /collective_rpc and /v1/weights/digest for one model until interrupted, so that
    `ckpt-engine update --endpoint URL` updates it (see server.serve for the options)."""
    from .server import serve as run

    run(model, port=port, **options)


def state_dict_loader(module, strict=True):
    """A loader that copies each (name, tensor) into the parameter or buffer of `module` of that
    name (in place, so references held elsewhere see the new values). With `strict`, an unknown name
    or a shape or dtype mismatch raises, naming the tensor."""
    import torch

    targets = module.state_dict(keep_vars=True)

    def load(weights):
        with torch.no_grad():
            for name, tensor in weights:
                target = targets.get(name)
                if target is None:
                    if strict:
                        raise KeyError("tensor '%s' is not in the model" % name)
                    continue
                if target.shape != tensor.shape or target.dtype != tensor.dtype:
                    raise ValueError("tensor '%s' is %s %s, the model has %s %s" % (
                        name, tensor.dtype, tuple(tensor.shape), target.dtype, tuple(target.shape)))
                target.copy_(tensor)

    return load
