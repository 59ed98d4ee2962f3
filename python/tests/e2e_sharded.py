"""One instance of the stand-in tensor-parallel engine (standin_engine.py) for end-to-end shard-aware
updates: --tp workers, each a rank's model loading with its vLLM-like loaders through
ckpt_engine_worker's EngineServer (shard-aware: the first update shows the layout, later ones carry
only what each rank's recorded loaders keep).

  e2e_sharded.py --tp 2 --instances 2 [--checkpoint-out DIR --seeds 2,3] [--scale 1] [--full]

writes one checkpoint per seed to DIR/seed-S (safetensors, two shards), then prints
"listening on http://127.0.0.1:PORT". Device ids: $CKPT_ENGINE_DEVICE_ID with {local_rank} = the
device's index (instance * tp + rank); each instance's update names its own devices. GET /v1/check/S: per worker, the tensors whose bytes differ from the same rank loaded
from seed S's full checkpoint with its loaders, the bytes of its last update, the bytes its
declaration names and how many parts its last update handed in place (strided views of the owners' memory).
"""

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import standin_engine as engine  # noqa: E402
from e2e_worker import write_safetensors  # noqa: E402
from ckpt_engine_worker.server import EngineServer, EngineWorker  # noqa: E402


def write_checkpoint(directory, seed):
    state = engine.checkpoint(seed)
    names = sorted(state)
    os.makedirs(directory, exist_ok=True)
    weight_map = {}
    for i, shard in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = "model-%05d-of-00002.safetensors" % (i + 1)
        write_safetensors(os.path.join(directory, file), {n: state[n] for n in shard})
        weight_map.update((n, file) for n in shard)
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def check(workers, tp, seed):
    import torch

    full = engine.checkpoint(seed)
    out = []
    for i, w in enumerate(workers):
        reference = engine.Model(i % tp, tp)
        reference.load_weights(list(full.items()))
        mine, theirs = w.model.state_dict(), reference.state_dict()
        differ = [n for n in theirs if mine[n].dtype != theirs[n].dtype or not torch.equal(
            mine[n].reshape(-1).view(torch.uint8), theirs[n].reshape(-1).view(torch.uint8))]
        shard = w.shard
        out.append({"device_id": w.device_id, "differ": differ, "last_bytes": w.last_bytes,
                    "declared_bytes": shard.wanted_bytes() if shard is not None and shard.declared else None,
                    "parts_in_place": shard.parts_in_place if shard is not None else 0,
                    "full_bytes": sum(t.numel() * t.element_size() for t in full.values())})
    return {"workers": out}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--instances", type=int, default=1, help="engine instances served by this process (devices instance*tp + rank)")
    parser.add_argument("--checkpoint-out", default=None)
    parser.add_argument("--seeds", default="2,3")
    parser.add_argument("--scale", type=int, default=1, help="multiply the model's widths (for measurements)")
    parser.add_argument("--full", action="store_true", help="declare nothing: every update delivers everything")
    args = parser.parse_args()
    engine.scale(args.scale)
    if args.checkpoint_out:
        for seed in args.seeds.split(","):
            write_checkpoint(os.path.join(args.checkpoint_out, "seed-" + seed), int(seed))
    pattern = os.environ.get("CKPT_ENGINE_DEVICE_ID", "dev-{local_rank}")
    workers = []
    for d in range(args.instances * args.tp):
        model = engine.Model(d % args.tp, args.tp)
        w = EngineWorker(model, model.load_weights, device_id=pattern.replace("{local_rank}", str(d)), shard_aware=not args.full)
        w.last_bytes = None
        receive = w.receive

        def counted(ticket, idle_timeout=None, w=w, receive=receive):
            summary = receive(ticket, idle_timeout)
            w.last_bytes = summary.bytes
            return summary

        w.receive = counted
        workers.append(w)
    routes = {"/v1/check/" + s: functools.partial(check, workers, args.tp, int(s)) for s in args.seeds.split(",")}
    server = EngineServer(workers, idle_timeout=60, routes=routes)
    print("listening on %s" % server.url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
