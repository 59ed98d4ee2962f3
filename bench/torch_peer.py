"""What a user would do without CheckpointEngine, measured for `ckpt-engine bench`: torch.distributed broadcasts
(gloo on CPU) of a safetensors checkpoint from its owners into every rank's model, per tensor and bucketed.

Tensors are split over the ranks as CheckpointSplit.ByTensor splits them (largest first to the least-loaded rank).
Every rank's "model" is one buffer per tensor, allocated and touched before timing (an engine's weights exist
before an update). Per tensor: each tensor is broadcast from its owner straight into every rank's model. Bucketed:
each owner packs its tensors into buckets of --bucket-size bytes in turn, broadcasts each, and every rank unpacks it
into its model. Bytes move as uint8 (gloo broadcasts raw bytes whatever the dtype). Each mode runs once as a warm-up,
then --repeat times, each timed from a barrier to the slowest rank. Rank 0 prints one JSON line. Standard library
and torch only.
"""

import argparse
import datetime
import json
import mmap
import os
import socket
import struct
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def read_tensors(directory):
    """[(path, name, data offset, nbytes)] of every tensor of the directory's .safetensors files, sorted by path then name."""
    out = []
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".safetensors"):
            continue
        path = os.path.join(directory, entry)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            out.append((path, name, 8 + length + start, end - start))
    return sorted(out, key=lambda t: (t[0], t[1]))


def split(tensors, ranks):
    """Owner of each tensor: largest first (ties by path, name) to the least-loaded rank (ties to the lowest)."""
    loads, owner = [0] * ranks, {}
    for path, name, _, nbytes in sorted(tensors, key=lambda t: (-t[3], t[0], t[1])):
        target = min(range(ranks), key=lambda r: (loads[r], r))
        owner[(path, name)] = target
        loads[target] += nbytes
    return owner


def run(rank, ranks, port, directory, repeat, bucket_size, timeout, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=ranks, timeout=datetime.timedelta(seconds=timeout))
    tensors = read_tensors(directory)
    owner = split(tensors, ranks)
    model = {}
    mine = {}
    for path, name, offset, nbytes in tensors:
        model[name] = torch.ones(nbytes, dtype=torch.uint8)  # Allocated and touched: the engine's weights.
        if owner[(path, name)] == rank:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                mine[name] = torch.frombuffer(bytearray(m[offset:offset + nbytes]), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    order = [(owner[(p, n)], n) for p, n, _, _ in tensors]

    def per_tensor():
        for src, name in order:
            if src == rank:
                model[name].copy_(mine[name])
            if model[name].numel():
                dist.broadcast(model[name], src=src)

    # Buckets: each owner's tensors in order, cut at bucket_size; step i takes bucket i of every owner in turn.
    per_owner = [[] for _ in range(ranks)]
    for src, name in order:
        buckets = per_owner[src]
        n = model[name].numel()
        if not buckets or (buckets[-1][1] + n > bucket_size and buckets[-1][0]):
            buckets.append(([], 0))
        names, size = buckets[-1]
        buckets[-1] = (names + [name], size + n)
    schedule = [(src, per_owner[src][i]) for i in range(max(len(b) for b in per_owner)) for src in range(ranks) if i < len(per_owner[src])]
    scratch = torch.empty(max(size for _, (_, size) in schedule), dtype=torch.uint8)

    def bucketed():
        for src, (names, size) in schedule:
            bucket, at = scratch[:size], 0
            if src == rank:
                for name in names:
                    n = model[name].numel()
                    bucket[at:at + n].copy_(mine[name])
                    at += n
            dist.broadcast(bucket, src=src)
            at = 0
            for name in names:
                n = model[name].numel()
                model[name].copy_(bucket[at:at + n])
                at += n

    result = {"bytes": sum(t[3] for t in tensors), "tensors": len(tensors), "ranks": ranks, "bucket_size": bucket_size}
    for label, fn in (("per_tensor", per_tensor), ("bucketed", bucketed)):
        seconds = []
        for _ in range(repeat + 1):
            dist.barrier()
            start = time.perf_counter()
            fn()
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            seconds.append(elapsed.item())
        result[label] = {"first": seconds[0], "seconds": seconds[1:]}
    for src, name in order:  # Every model holds the owners' bytes.
        if src == rank and not torch.equal(model[name], mine[name]):
            raise RuntimeError("rank %d: tensor %s differs from its owner's bytes" % (rank, name))
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        queue.put(result)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="directory of .safetensors files")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bucket-size", type=int, default=256 << 20)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run (and for each collective)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=run, args=(r, args.ranks, port, args.checkpoint, args.repeat, args.bucket_size, args.timeout, queue),
                         daemon=True) for r in range(args.ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():  # Past the deadline: none is left behind.
            p.kill()
            p.join()
    failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        print("torch peer: rank(s) %s failed" % failed, file=sys.stderr)
        return 1
    print(json.dumps(queue.get()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
