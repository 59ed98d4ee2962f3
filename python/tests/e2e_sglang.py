"""A stand-in shaped like an SGLang server started with --load-format dummy --wait-for-initial-weights (written
here, nothing copied): --tp model runners of the stand-in engine (standin_engine.py) behind SGLang's HTTP
surface for checkpoint-engine updates, each runner calling `checkpoint_engine.worker.update_weights_from_ipc`
(this package's shim) with its handle, the model's load_weights and a post-load hook, as SGLang's runner does.

  e2e_sglang.py --tp 2 [--checkpoint-out DIR --seeds 2,3]

- GET /ping: 200 from the start; GET /health: 503 until the first update succeeded;
- POST /update_weights_from_ipc {"zmq_handles": {device: handle}, "flush_cache": bool, "weight_version": str}:
  every runner receives with its device's handle; 200 {"success": true, ...} or 400 {"success": false, ...};
  a GET of it answers 405, as a POST-only route of SGLang's web framework does;
- GET /v1/check/S: per runner, as e2e_sharded.py's, plus the last weight_version and post-load count.
Device ids: $CKPT_ENGINE_DEVICE_ID with {local_rank} = the runner's rank. Prints "listening on URL".
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import standin_engine as engine  # noqa: E402
from e2e_sharded import check, write_checkpoint  # noqa: E402
from ckpt_engine_worker import sglang  # noqa: E402

sys.path.insert(0, sglang.shim_path())


class Runner:
    """One tensor-parallel rank's model runner."""

    def __init__(self, rank, tp, device_id):
        self.model, self.device_id = engine.Model(rank, tp), device_id
        self.post_loads, self.last_bytes = 0, None

    @property
    def shard(self):
        return sglang._shards.get(self.model)

    def update_weights_from_ipc(self, handles):
        from checkpoint_engine.worker import update_weights_from_ipc

        summary = update_weights_from_ipc(None, handles[self.device_id], device_id=None, run=self.model.load_weights, post_hook=self.post_load)
        self.last_bytes = summary["bytes"]

    def post_load(self):
        self.post_loads += 1


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        state = self.server.state
        if self.path == "/ping":
            self.reply(200, {})
        elif self.path == "/health":
            self.reply(200 if state["weight_version"] is not None else 503, {})
        elif self.path == "/update_weights_from_ipc":
            self.reply(405, {"detail": "Method Not Allowed"})
        elif self.path.startswith("/v1/check/"):
            out = check(state["runners"], len(state["runners"]), int(self.path.rsplit("/", 1)[1]))
            for w, r in zip(out["workers"], state["runners"]):
                w["post_loads"] = r.post_loads
            out["weight_version"] = state["weight_version"]
            self.reply(200, out)
        else:
            self.reply(404, {"detail": "Not Found"})

    def do_POST(self):
        if self.path != "/update_weights_from_ipc":
            self.reply(404, {"detail": "Not Found"})
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        errors = []

        def run(runner):
            try:
                runner.update_weights_from_ipc(request["zmq_handles"])
            except Exception as e:  # noqa: BLE001 - reported in the answer
                errors.append("%s: %s: %s" % (runner.device_id, type(e).__name__, e))

        threads = [threading.Thread(target=run, args=(r,)) for r in self.server.state["runners"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.reply(400, {"success": False, "message": "; ".join(errors)})
            return
        self.server.state["weight_version"] = request.get("weight_version")
        self.reply(200, {"success": True, "message": "Succeeded to update model weights."})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--checkpoint-out", default=None)
    parser.add_argument("--seeds", default="2,3")
    args = parser.parse_args()
    if args.checkpoint_out:
        for seed in args.seeds.split(","):
            write_checkpoint(os.path.join(args.checkpoint_out, "seed-" + seed), int(seed))
    pattern = os.environ.get("CKPT_ENGINE_DEVICE_ID", "dev-{local_rank}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.state = {"runners": [Runner(r, args.tp, pattern.replace("{local_rank}", str(r))) for r in range(args.tp)], "weight_version": None}
    print("listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
