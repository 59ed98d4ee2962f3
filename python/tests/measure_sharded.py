"""Measures shard-aware updates against full ones in one run, on the stand-in engine (standin_engine.py, a
transformer-shaped checkpoint: embedding, attention, dense and MoE MLPs, FP8 blocks, LM head):

  measure_sharded.py [--tp 2] [--scale 32] [--rounds 4] [--repeat 6] [--json]

Two engine processes (e2e_sharded.py) serve the same model at the same TP, one shard-aware and one that
declares nothing, and the parameter server (`./ckpt-engine launch --nproc TP -- update --repeat N`) updates
them in turns from the same checkpoint, ROUNDS times each. Reported: the bytes each rank received in an
update (shard-aware / full), and the median update time (each rank's `result ... seconds=`). The first round
warms up and is not timed (the shard-aware engine's first update delivers everything, its second records
the loaders), nor is the first update of each CLI process, which pays for first touches. After every run, every rank's state_dict() must equal its full load.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def start_engine(name, args, extra):
    env = dict(os.environ, CKPT_ENGINE_DEVICE_ID="measure-%d-%s-{local_rank}" % (os.getpid(), name))
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "e2e_sharded.py"), "--tp", str(args.tp), "--scale", str(args.scale),
                                "--seeds", "2"] + extra, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        sys.exit("the %s engine did not start: %r" % (name, line))
    return process, line[len("listening on "):].strip(), env


def update(args, url, env, checkpoint):
    cli = os.path.join(ROOT, "ckpt-engine")
    run = subprocess.run([cli, "launch", "--nproc", str(args.tp), "--", "update", "--checkpoint-path", checkpoint, "--endpoint", url,
                          "--inference-parallel-size", str(args.tp), "--repeat", str(args.repeat), "--timeout", "120"],
                         capture_output=True, text=True, env=env, timeout=600)
    if run.returncode != 0:
        sys.exit("update of %s exited %d:\n%s%s" % (url, run.returncode, run.stderr, run.stdout))
    return [(int(k), float(s), float(reload)) for s, reload, k in
            re.findall(r"result method=broadcast .*?seconds=([0-9.]+) .*?reload=([0-9.]+) .*?update=(\d+)", run.stdout)]


def check(url):
    with urllib.request.urlopen(url + "/v1/check/2", timeout=120) as r:
        workers = json.load(r)["workers"]
    for w in workers:
        if w["differ"]:
            sys.exit("%s differs from its full load in %s" % (w["device_id"], w["differ"]))
    return [w["last_bytes"] for w in workers], workers[0]["full_bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--scale", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckpt-measure-") as tmp:
        engines = {}
        try:
            engines["shard-aware"] = start_engine("sa", args, ["--checkpoint-out", tmp])
            engines["full"] = start_engine("full", args, ["--full"])
            checkpoint = os.path.join(tmp, "seed-2")
            size = sum(os.path.getsize(os.path.join(checkpoint, f)) for f in os.listdir(checkpoint) if f.endswith(".safetensors"))
            seconds, reloads = {m: [] for m in engines}, {m: [] for m in engines}
            received = {}
            for r in range(args.rounds):
                for mode, (_, url, env) in engines.items():
                    for k, s, reload in update(args, url, env, checkpoint):
                        if r > 0 and k > 0:
                            seconds[mode].append(s)
                            reloads[mode].append(reload)
                    received[mode], full_bytes = check(url)
        finally:
            for process, _, _ in engines.values():
                process.kill()
                process.wait()
    result = {
        "tp": args.tp, "scale": args.scale, "checkpoint_bytes": size, "tensor_bytes": full_bytes,
        "bytes_per_rank": received, "bytes_ratio": [a / b for a, b in zip(received["shard-aware"], received["full"])],
        "median_seconds": {m: statistics.median(v) for m, v in seconds.items()}, "samples": {m: len(v) for m, v in seconds.items()},
        "median_reload_seconds": {m: statistics.median(v) for m, v in reloads.items()},
    }
    result["time_ratio"] = result["median_seconds"]["shard-aware"] / result["median_seconds"]["full"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("checkpoint: %.1f MB of tensors (stand-in engine, --scale %d), TP %d" % (full_bytes / 1e6, args.scale, args.tp))
    for rank, (a, b) in enumerate(zip(received["shard-aware"], received["full"])):
        print("rank %d received %.1f MB shard-aware, %.1f MB full: %.2fx" % (rank, a / 1e6, b / 1e6, a / b))
    print("median reload stage (sum over buckets) %.4f s shard-aware, %.4f s full" % (
        result["median_reload_seconds"]["shard-aware"], result["median_reload_seconds"]["full"]))
    print("median update %.4f s shard-aware, %.4f s full (%d and %d samples): %.2fx" % (
        result["median_seconds"]["shard-aware"], result["median_seconds"]["full"], result["samples"]["shard-aware"], result["samples"]["full"], result["time_ratio"]))


if __name__ == "__main__":
    main()
