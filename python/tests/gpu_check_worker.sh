#!/usr/bin/env bash
# GPU check, Python half: ckpt-engine updates a torch model on one GPU through the package (CUDA IPC),
# broadcast then P2P (`--update-method all`, twice each), then the model's bytes are compared with the
# checkpoint's; one more update with the worker checking every tensor's CRC-32 (`--verify`); the same
# bytes moved as a user would without this project (pinned host memory, then load_state_dict), timed
# against our warm broadcast update; and FP8 registration (`update --quantize fp8` into a model laid out
# as `ckpt-engine quantize` writes the FP8 copy, compared with that copy).
#   gpu_check_worker.sh CKPT_ENGINE SIZE WORKDIR
# GPU_CHECK_TORCH_DEVICE=cpu keeps the model on the CPU and updates it through the host backend
# (`--device host`, shared memory): the dry run of the check uses it on machines without a GPU.
# Each phase has its own time limit (coreutils timeout) and a line "python half: PHASE" before it, so a
# phase that runs out is named here, and the last such line in the log says where an outer limit struck.
set -euo pipefail
bin="$1" size="$2" work="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
case "${GPU_CHECK_TORCH_DEVICE:=cuda}" in
  cuda) device=cuda; unset CKPT_ENGINE_DEVICE_ID ;; # Both sides name the GPU by its UUID.
  cpu) device=host; export CKPT_ENGINE_DEVICE_ID=host-gpu-check-0 ;; # A CPU has none: one id for both sides.
  *) echo "GPU_CHECK_TORCH_DEVICE must be cuda or cpu, not '$GPU_CHECK_TORCH_DEVICE'"; exit 2 ;;
esac
export GPU_CHECK_TORCH_DEVICE
mib="$("$py" -c 'import re, sys; n, u = re.fullmatch(r"(\d+)\s*([KMG]i?B)", sys.argv[1]).groups(); print(max(1, int(n) * {"K": 1, "M": 1024, "G": 1 << 20}[u[0]] // 1024))' "$size")"
ckpt="$work/python-checkpoint"
logs="${GPU_CHECK_LOGS:-$work}"

# phase NAME LIMIT_S COMMAND...: COMMAND under its own limit; says which phase ran out.
phase() {
  local name="$1" limit="$2" rc=0
  shift 2
  echo "python half: $name (limit $limit s)"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "python half: TIMEOUT: '$name' ran out of its $limit s (timeout exit $rc)"
  elif [ "$rc" != 0 ]; then
    echo "python half: '$name' failed (exit $rc)"
  fi
  return "$rc"
}

# Eight layers: F8_E4M3 MLP weights on the odd ones. A CPU dry run on a torch without float8 (before 2.1)
# writes one layer, which has none; on the GPU such a torch fails the check, naming the dtype.
layers=8 shards=4
if [ "$GPU_CHECK_TORCH_DEVICE" = cpu ] && ! "$py" -c 'import sys, torch; sys.exit(not hasattr(torch, "float8_e4m3fn"))' 2>/dev/null; then
  layers=1 shards=1
  echo "python half: this torch has no float8: a one-layer sample without F8_E4M3 tensors (CPU dry run only)"
fi
phase "write a ${mib} MiB sample checkpoint" 60 "$bin" sample "$ckpt" --size-mb "$mib" --shards "$shards" --layers "$layers"
# start_worker CHECKPOINT TAG: a Python worker whose model has CHECKPOINT's layout; sets pid and url.
pid=""
trap 'kill "$pid" 2>/dev/null || true' EXIT
start_worker() {
  echo "python half: start the Python worker for $(basename "$1") ($py, torch on $GPU_CHECK_TORCH_DEVICE; limit 60 s)"
  "$py" "$here/gpu_check_worker.py" serve "$1" >"$logs/python-worker-$2.out" 2>"$logs/python-worker-$2.err" &
  pid=$!
  for _ in $(seq 1 300); do
    grep -q "listening on" "$logs/python-worker-$2.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "python half: the Python worker exited:"; cat "$logs/python-worker-$2.err"; exit 1; }
    sleep 0.2
  done
  url="$(grep -o 'http://[0-9.:]*' "$logs/python-worker-$2.out" | head -1 || true)"
  [ -n "$url" ] || { echo "python half: TIMEOUT: the Python worker did not start within 60 s"; cat "$logs/python-worker-$2.err"; exit 124; }
}
start_worker "$ckpt" bf16
# --timeout: each update's own deadline, inside the phase's limit, so a stuck update fails naming what it waited for.
export CKPT_ENGINE_MAX_BUCKET_SIZE_GB="${CKPT_ENGINE_MAX_BUCKET_SIZE_GB:-1}"
phase "update broadcast + P2P, twice each (--device $device)" 120 \
  "$bin" launch --nproc 1 -- update --device "$device" --checkpoint-path "$ckpt" --endpoint "$url" \
  --update-method all --repeat 2 --timeout 50 --trace "$logs/python-trace.json" | tee "$logs/python-updates.log"
phase "verify the model against the checkpoint" 90 "$py" "$here/gpu_check_worker.py" verify "$ckpt" "$url"
# The worker checks every tensor's CRC-32 where it landed (on a GPU: copied back to the host to be hashed).
phase "update with checksums verified by the worker (--verify)" 90 \
  "$bin" launch --nproc 1 -- update --device "$device" --checkpoint-path "$ckpt" --endpoint "$url" \
  --update-method broadcast --verify --timeout 50
# The same bytes as a user would move them without this project: the files in pinned host memory, then the
# model's load_state_dict; against the warm broadcast update above (its second one).
ours="$(grep -o 'result method=broadcast .*update=1' "$logs/python-updates.log" | grep -o 'seconds=[0-9.]*' | cut -d= -f2 || true)"
phase "torch baseline: load_state_dict from pinned host memory" 120 "$py" "$here/gpu_check_worker.py" baseline "$ckpt" "${ours:-nan}"
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true

# FP8 registration: the parameter server quantizes the BF16 weights while registering (`update --quantize fp8`)
# and the model, laid out as `quantize` writes the FP8 copy, must end up equal to that copy.
if ! "$py" -c 'import sys, torch; sys.exit(not hasattr(torch, "float8_e4m3fn"))' 2>/dev/null; then
  echo "python half: FP8 registration: SKIPPED, this torch has no float8 (CPU dry run only; on the GPU such a torch fails above)"
  exit 0
fi
phase "write the FP8 copy (ckpt-engine quantize)" 120 "$bin" quantize "$ckpt" "$ckpt-fp8"
start_worker "$ckpt-fp8" fp8
phase "update with FP8 registration (--quantize fp8)" 120 \
  "$bin" launch --nproc 1 -- update --device "$device" --checkpoint-path "$ckpt" --quantize fp8 --endpoint "$url" \
  --update-method broadcast --timeout 100
phase "verify the model against the FP8 copy" 90 "$py" "$here/gpu_check_worker.py" verify "$ckpt-fp8" "$url"
