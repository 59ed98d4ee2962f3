"""GPU check, Python half (run by the GPU-check payload): a one-GPU stand-in engine whose model holds
every tensor of a checkpoint on cuda:0 and receives updates through ckpt_engine_worker's vLLM
extension (CUDA IPC), then a byte-for-byte comparison of its weights with the checkpoint files.

  gpu_check_worker.py serve CHECKPOINT_DIR         prints "listening on http://127.0.0.1:PORT"
  gpu_check_worker.py verify CHECKPOINT_DIR URL    exit 0 when every tensor equals the files'
  gpu_check_worker.py baseline CHECKPOINT_DIR OURS_S
      the same bytes as a user would move them: the files read into pinned host memory, then a torch
      Module's load_state_dict on the device (best of 3, synchronized); prints both times and their ratio

GPU_CHECK_TORCH_DEVICE=cpu keeps the model on the CPU (the check's dry run, with `--device host`).
"""

import hashlib
import json
import mmap
import os
import struct
import sys
import time
import types
import urllib.request

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2e_worker  # noqa: E402

# "cpu" runs this half against the host backend (a dry run of the script on a machine without a GPU).
DEVICE = os.environ.get("GPU_CHECK_TORCH_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    sys.exit("GPU_CHECK_TORCH_DEVICE must be cuda or cpu, not %r" % DEVICE)
from ckpt_engine_worker import dtypes  # noqa: E402
from ckpt_engine_worker.vllm import WorkerExtension  # noqa: E402


def inventory(directory):
    """(file, name, dtype, shape, begin, end) of every tensor, offsets from the start of the file."""
    for file in sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")):
        path = os.path.join(directory, file)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                yield path, name, entry["dtype"], entry["shape"], 8 + length + begin, 8 + length + end


class Model:
    """Every tensor of the checkpoint, on the GPU, in the dtype and shape of the files."""

    def __init__(self, directory):
        self.weights = {name: torch.zeros(shape, dtype=dtypes.torch_dtype(dtype), device=DEVICE)
                        for _, name, dtype, shape, _, _ in inventory(directory)}

    def load_weights(self, weights):
        for name, tensor in weights:
            if name not in self.weights:
                raise KeyError("the model has no tensor %s" % name)
            self.weights[name].copy_(tensor)

    def state_dict(self):
        return self.weights


class Worker(WorkerExtension):
    def __init__(self, directory):
        self.local_rank = self.rank = 0
        self.device = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device(DEVICE)
        self.model_runner = types.SimpleNamespace(model=Model(directory))


def verify(directory, url):
    with urllib.request.urlopen(url.rstrip("/") + "/v1/weights/digest", timeout=600) as r:
        held = json.loads(r.read())["shards"][0]["tensors"]
    wrong, count, total = [], 0, 0
    for path, name, _, _, begin, end in inventory(directory):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            expected = hashlib.sha256(memoryview(m)[begin:end]).hexdigest()
        if held.get(name) != expected:
            wrong.append(name)
        count, total = count + 1, total + end - begin
    if wrong:
        print("python worker: %d of %d tensors differ from the checkpoint, e.g. %s" % (len(wrong), count, ", ".join(wrong[:5])))
        return 1
    print("python worker: all %d tensors (%.2f GiB) on %s equal the checkpoint" % (count, total / 2**30, torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE))
    return 0


class Baseline(torch.nn.Module):
    """The checkpoint's tensors as a Module's parameters (names with '.' escaped, as Modules require)."""

    def __init__(self, directory):
        super().__init__()
        self.weights = torch.nn.ParameterDict({
            name.replace(".", "__"): torch.nn.Parameter(torch.zeros(shape, dtype=dtypes.torch_dtype(dtype), device=DEVICE), requires_grad=False)
            for _, name, dtype, shape, _, _ in inventory(directory)})


def baseline(directory, ours):
    """Times load_state_dict from pinned host memory into a Module on the device (best of 3)."""
    state, total = {}, 0
    for path, name, dtype, shape, begin, end in inventory(directory):
        with open(path, "rb") as f:
            f.seek(begin)
            raw = bytearray(f.read(end - begin))
        host = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        host = host.view(dtypes.torch_dtype(dtype)).reshape(shape)
        state["weights." + name.replace(".", "__")] = host.pin_memory() if DEVICE == "cuda" else host.clone()
        total += end - begin
    model = Baseline(directory)
    best = float("inf")
    for _ in range(3):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.load_state_dict(state)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    held = model.state_dict()
    wrong = [k for k, v in state.items() if not torch.equal(held[k].cpu().reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))]
    if wrong:
        print("torch baseline: %d tensors differ after load_state_dict, e.g. %s" % (len(wrong), ", ".join(wrong[:3])))
        return 1
    gbps = total / best / 1e9
    line = "torch baseline: load_state_dict of %.2f GiB from pinned host memory on %s: %.3f s (%.2f GB/s)" % (total / 2**30, DEVICE, best, gbps)
    if ours == ours:  # Not NaN: our warm broadcast update was timed.
        line += "; our warm broadcast update: %.3f s (%.2f GB/s); time ours/torch %.2f" % (ours, total / ours / 1e9, ours / best)
    print(line)
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        e2e_worker.serve([Worker(sys.argv[2])])
    elif len(sys.argv) == 4 and sys.argv[1] == "verify":
        sys.exit(verify(sys.argv[2], sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "baseline":
        sys.exit(baseline(sys.argv[2], float(sys.argv[3])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
