#!/usr/bin/env bash
# GPU check, Python half: ckpt-engine updates a torch model on one GPU through the package (CUDA IPC),
# then the model's bytes are compared with the checkpoint's.   gpu_check_worker.sh CKPT_ENGINE SIZE WORKDIR
set -euo pipefail
bin="$1" size="$2" work="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
mib="$("$py" -c 'import re, sys; n, u = re.fullmatch(r"(\d+)\s*([KMG]i?B)", sys.argv[1]).groups(); print(max(1, int(n) * {"K": 1, "M": 1024, "G": 1 << 20}[u[0]] // 1024))' "$size")"
ckpt="$work/python-checkpoint"
"$bin" sample "$ckpt" --size-mb "$mib" --shards 4 --layers 8 >/dev/null
env -u CKPT_ENGINE_DEVICE_ID "$py" "$here/gpu_check_worker.py" serve "$ckpt" >"$work/python-worker.out" 2>"$work/python-worker.err" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "listening on" "$work/python-worker.out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "the Python worker exited:"; cat "$work/python-worker.err"; exit 1; }
  sleep 0.2
done
url="$(grep -o 'http://[0-9.:]*' "$work/python-worker.out" | head -1)"
[ -n "$url" ] || { echo "the Python worker did not start within 120 s"; cat "$work/python-worker.err"; exit 1; }
CKPT_ENGINE_MAX_BUCKET_SIZE_GB="${CKPT_ENGINE_MAX_BUCKET_SIZE_GB:-1}" "$bin" launch --nproc 1 -- update --device cuda --checkpoint-path "$ckpt" --endpoint "$url" --repeat 2 --timeout 300
"$py" "$here/gpu_check_worker.py" verify "$ckpt" "$url"
