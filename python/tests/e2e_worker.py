"""A stand-in inference engine for end-to-end tests: one process serving N "devices" (like a
tensor-parallel vLLM engine), each a worker with a small transformer-like torch model that loads
through ckpt_engine_worker's vLLM extension. Speaks vLLM's HTTP surface: GET /health and
POST /collective_rpc (the method runs on every worker in parallel), plus GET /v1/weights/digest
(SHA-256 of every state_dict() tensor per device, the reference worker's format).

  e2e_worker.py --devices 2 --checkpoint-out DIR [--fail-on NAME] [--device cuda]

writes the source checkpoint (the same model, other values) to DIR as two safetensors shards, then
prints "listening on http://127.0.0.1:PORT". Device ids come from $CKPT_ENGINE_DEVICE_ID.

With --device cuda, worker i is on cuda:i of a CUDA driver that torch does not use: the stand-in
driver the CPU tests build, named by $CKPT_ENGINE_CUDA_LIBRARY, with torch's own CUDA hidden. Device
ids are then the driver's GPU UUIDs, and the "cuda-ipc" buffers are read through the driver
(segments.open_cuda_ipc's `through_driver`), since this torch cannot view device memory.
"""

import argparse
import ctypes
import functools
import json
import os
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ckpt_engine_worker import dtypes, segments, state_dict_loader  # noqa: E402
from ckpt_engine_worker.segments import tensor_sha256  # noqa: E402
from ckpt_engine_worker.vllm import WorkerExtension  # noqa: E402

HIDDEN = 32


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = torch.nn.Parameter(torch.ones(HIDDEN))
        self.qkv_proj = torch.nn.Linear(HIDDEN, 3 * HIDDEN, bias=False, dtype=torch.bfloat16)
        self.o_proj = torch.nn.Linear(HIDDEN, HIDDEN, dtype=torch.float16)
        self.up_proj = torch.nn.Linear(HIDDEN, 4 * HIDDEN, bias=False, dtype=torch.bfloat16)
        self.down_proj = torch.nn.Linear(4 * HIDDEN, HIDDEN, bias=False, dtype=torch.bfloat16)


class TinyTransformer(torch.nn.Module):
    """A few transformer-like layers, plus buffers of every dtype this torch has (a scalar and a
    zero-size one among them)."""

    def __init__(self, seed):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(64, HIDDEN, dtype=torch.bfloat16)
        self.layers = torch.nn.ModuleList(Block() for _ in range(3))
        self.norm = torch.nn.Parameter(torch.ones(HIDDEN, dtype=torch.float32))
        self.lm_head = torch.nn.Linear(HIDDEN, 64, bias=False, dtype=torch.float64)
        self.register_buffer("position_ids", torch.zeros(32, dtype=torch.int64))
        self.register_buffer("causal_mask", torch.zeros(16, 16, dtype=torch.bool))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("empty_adapter", torch.zeros(0, HIDDEN, dtype=torch.float16))
        for name in dtypes.supported_names():
            self.register_buffer("extra_" + name.lower(), torch.zeros(8, dtype=dtypes.torch_dtype(name)))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for t in self.state_dict().values():
                if t.numel():
                    raw = t.reshape(-1).view(torch.uint8)
                    raw.copy_(torch.randint(0, 2 if t.dtype == torch.bool else 256, raw.shape, dtype=torch.uint8, generator=g))


def write_safetensors(path, tensors):
    """A safetensors file: 8-byte little-endian header length, JSON header, then the data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": dtypes.wire_name(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for t in tensors.values():
            t = t.contiguous()
            if t.numel():
                f.write((ctypes.c_ubyte * (t.numel() * t.element_size())).from_address(t.data_ptr()))


def write_checkpoint(directory, seed):
    state = TinyTransformer(seed).state_dict()
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    os.makedirs(directory, exist_ok=True)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        write_safetensors(os.path.join(directory, file), {n: state[n] for n in shard})
        weight_map.update((n, file) for n in shard)
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


class Model(TinyTransformer):
    """vLLM's model interface: load_weights(weights=[(name, tensor)]) copies what it is given."""

    def __init__(self, seed, fail_on):
        super().__init__(seed)
        self._copy = state_dict_loader(self)
        self._fail_on = fail_on

    def load_weights(self, weights):
        if self._fail_on and any(name == self._fail_on for name, _ in weights):
            raise RuntimeError("refusing tensor %s: injected loader failure" % self._fail_on)
        self._copy(weights)


class Worker(WorkerExtension):
    """vLLM's GPU worker as far as the extension sees it, on the CPU."""

    def __init__(self, local_rank, fail_on, device):
        self.local_rank = self.rank = local_rank
        self.device = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
        self.model_runner = type("ModelRunner", (), {})()
        self.model_runner.model = Model(seed=1, fail_on=fail_on)


def serve(workers):
    busy = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            sys.stderr.write("e2e-worker: %s\n" % (fmt % args))

        def reply(self, status, body):
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # A failed update's caller may hang up before the answer.

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {})
            elif self.path == "/v1/weights/digest":
                self.reply(200, {"shards": [{"device_id": w.ckpt_engine_device_id(),
                                             "tensors": {n: tensor_sha256(t) for n, t in w.model_runner.model.state_dict().items()}}
                                            for w in workers]})
            else:
                self.reply(404, {"error": "no such path %s" % self.path})

        def body(self):
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]  # each chunk ends in CRLF
                if size == 0:
                    return data
                data += chunk

        def do_POST(self):
            if self.path != "/collective_rpc":
                self.reply(404, {"error": "no such path %s" % self.path})
                return
            try:
                request = json.loads(self.body())
                method = getattr(Worker, request["method"])
            except (ValueError, KeyError, AttributeError) as e:
                self.reply(400, {"error": "bad request: %s" % e})
                return
            if not busy.acquire(blocking=False):
                self.reply(409, {"error": "an update is already running"})
                return
            try:
                results = [None] * len(workers)

                def call(i):
                    try:
                        results[i] = (True, method(workers[i], *request.get("args", []), **request.get("kwargs", {})))
                    except Exception as e:  # noqa: BLE001 - reported to the caller
                        results[i] = (False, "%s: %s" % (type(e).__name__, e))

                threads = [threading.Thread(target=call, args=(i,)) for i in range(len(workers))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            finally:
                busy.release()
            failed = ["worker %d: %s" % (i, r[1]) for i, r in enumerate(results) if not r[0]]
            for line in failed:
                sys.stderr.write("e2e-worker: update failed: %s\n" % line)
            if failed:
                self.reply(500, {"error": "; ".join(failed)})
            else:
                self.reply(200, {"results": [r[1] for r in results]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--checkpoint-out", required=True)
    parser.add_argument("--fail-on", default=None, help="a tensor name whose loading raises")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the workers' GPUs are a driver's that torch does not use")
    args = parser.parse_args()
    if args.device == "cuda":
        if torch.cuda.is_available():
            parser.error("--device cuda reads buffers through the driver, for a torch without CUDA: hide torch's GPUs (CUDA_VISIBLE_DEVICES=)")
        # The one change to the engine's path: views of the attached buffer are host copies made by the driver.
        segments.open_cuda_ipc = functools.partial(segments.open_cuda_ipc, through_driver=True)
    write_checkpoint(args.checkpoint_out, seed=2)
    serve([Worker(i, args.fail_on, args.device) for i in range(args.devices)])


if __name__ == "__main__":
    main()
