#!/usr/bin/env bash
# Runs on the GPU machine from the unpacked payload (see scripts/gpu-check.sh): needs no .NET, no network.
#   1. the GPU unit tests (trait Category=GPU)
#   2. a single-GPU broadcast update of a SIZE synthetic checkpoint to the .NET reference worker and to
#      the Python worker (torch), both verified against the checkpoint
#   3. the update's host-to-device stage throughput as a ratio to a plain pinned cuMemcpyHtoD of the same
#      bytes in the same run (target >= 0.9), and the update's wall time split per stage
# GPU_CHECK_DRY_RUN=1 stops before the first step that needs a GPU.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
app="$here/app"
size="${1:-4GiB}"
py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 # No ICU needed on the GPU machine.
failed=0
say() { echo "gpu-check: $*"; }

say "payload $(du -sm "$here" | cut -f1) MiB; $("$app/ckpt-engine" --version 2>/dev/null || echo "ckpt-engine does not start")"
"$app/ckpt-engine" demo --device host --size 8MiB --method broadcast --json >"$work/host.json" 2>"$work/host.err" \
  && say "host backend works here: $(cat "$work/host.json")" || { say "FAIL: the payload's CLI does not run: $(tail -3 "$work/host.err")"; exit 1; }
# NCCL from torch's nvidia-nccl wheel when the loader does not find one.
if [ -z "${CKPT_ENGINE_NCCL_LIBRARY:-}" ]; then
  nccl="$("$py" -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null || true)"
  [ -f "$nccl" ] && export CKPT_ENGINE_NCCL_LIBRARY="$nccl" && say "NCCL: $nccl"
fi
say "1/3 GPU unit tests"
if "$app/CheckpointEngine.Tests" -trait "Category=GPU" -noColor >"$work/tests.log" 2>&1; then
  summary="$(grep -E 'Total:' "$work/tests.log" | tail -1 | sed 's/^ *//')"
  say "GPU unit tests: $summary"
  if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ] && ! grep -q "Skipped: 0," <<<"$summary"; then
    failed=1; say "FAIL: GPU tests skipped on a GPU machine:"; grep -B1 -A2 "\[SKIP\]" "$work/tests.log" | head -20
  fi
else
  failed=1; say "FAIL: GPU unit tests"; tail -40 "$work/tests.log"
fi

if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  [ -x "$here/python/tests/gpu_check_worker.sh" ] && say "the Python half is in the payload" || { failed=1; say "FAIL: no Python half in the payload"; }
  say "dry run: stopping before the steps that need a GPU (the GPU unit tests above skip without one)"
  exit "$failed"
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L

say "2/3 broadcast update of a $size checkpoint to the .NET worker"
if CKPT_ENGINE_MAX_BUCKET_SIZE_GB="${CKPT_ENGINE_MAX_BUCKET_SIZE_GB:-1}" "$app/ckpt-engine" demo --device cuda --ranks 1 --size "$size" --method broadcast --json >"$work/demo.json" 2>"$work/demo.err"; then
  say ".NET worker: $(cat "$work/demo.json")"
else
  failed=1; say "FAIL: .NET worker update"; tail -30 "$work/demo.err"; cat "$work/demo.json"
fi
if [ -x "$here/python/tests/gpu_check_worker.sh" ]; then
  if "$here/python/tests/gpu_check_worker.sh" "$app/ckpt-engine" "$size" "$work" >"$work/python.log" 2>&1; then
    say "Python worker: $(tail -1 "$work/python.log")"
  else
    failed=1; say "FAIL: Python worker update"; tail -30 "$work/python.log"
  fi
else
  failed=1; say "FAIL: no Python worker check in this payload"
fi

say "3/3 host-to-device throughput against a plain pinned cuMemcpyHtoD"
if "$app/ckpt-engine" bench cuda-h2d-baseline "$size" >"$work/baseline.txt" 2>&1 && [ -s "$work/demo.json" ]; then
  "$py" - "$work/demo.json" "$work/baseline.txt" <<'PY' || failed=1
import json, sys
demo = json.loads(open(sys.argv[1]).read().splitlines()[0])
base = dict(kv.split("=") for kv in open(sys.argv[2]).read().split())
h2d = demo["bytes"] / demo["stage_seconds"] / 1e9
ratio = h2d / float(base["gbps"])
print(f"gpu-check: H2D stage {h2d:.2f} GB/s, pinned cuMemcpyHtoD {float(base['gbps']):.2f} GB/s: ratio {ratio:.2f} (target >= 0.9)")
print(f"gpu-check: update wall {demo['seconds']:.3f} s = stage sums: H2D {demo['stage_seconds']:.3f} s, broadcast {demo['broadcast_seconds']:.3f} s, "
      f"reload {demo['reload_seconds']:.3f} s; pipeline efficiency {demo['efficiency']:.2f}; first update {demo['first_seconds']:.3f} s")
sys.exit(0 if demo["verified"] and ratio >= 0.9 else 1)
PY
else
  failed=1; say "FAIL: baseline"; cat "$work/baseline.txt"
fi
[ "$failed" = 0 ] && say "PASS" || say "FAILED"
exit "$failed"
