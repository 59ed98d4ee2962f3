#!/usr/bin/env bash
# Runs on the GPU machine from the unpacked payload (see scripts/gpu-check.sh): needs no .NET, no network.
#   gpu-check/run.sh [SIZE]      SIZE of the synthetic checkpoints, default 4GiB
# Steps, each under its own time limit (coreutils timeout), all within GPU_CHECK_BUDGET_S (default 420 s):
#   1. the CLI starts (host backend, 8 MiB)
#   2. the GPU unit tests (trait Category=GPU): device copies, IPC handles, one-rank NCCL broadcast,
#      all-reduce and sub-communicator, a part cut out on the device, NCCL's grouped send and receive (a
#      one-rank communicator sending to itself inside ncclGroupStart/End) and the one-rank scatter, and both
#      receivers refusing a cuda-ipc attach larger than its allocation
#   3. a SIZE update on one GPU to the .NET reference worker, broadcast then P2P staging (`--method all`)
#   4. the same to the Python worker (torch, CUDA IPC), both methods; both workers verified byte for byte;
#      then an update whose worker checks every tensor's CRC-32 on the GPU side (`--verify`), a plain torch
#      baseline on the same checkpoint and GPU (pinned host memory, load_state_dict) timed against our warm
#      broadcast update, and FP8 registration (`update --quantize fp8`) into a torch model on the GPU,
#      compared with the FP8 copy `ckpt-engine quantize` writes
#   5. a plain pinned cuMemcpyHtoD of SIZE (the baseline of the figures)
#   6. the host backend's figures on this machine's cores (no GPU involved): `bench --device host` of 2 ranks x 1 GiB,
#      broadcast, P2P, joiners and the TP-2 engine full and shard-aware, on one host and posing as two hosts
#      (--separate-hosts); figures only: a run with no time left for it skips it
# Each step is PASS, FAIL, TIMEOUT (names the step and its limit), NOT RUN (no time left) or SKIPPED
# (dry run only); the run passes when every step passes or is skipped. Figures (H2D stage against the baseline, target >= 0.9; wall time per stage) are printed
# and archived, never failing the run.
# What one GPU covers: the driver calls on real hardware, page-locking, IPC handles opened by another
# process (.NET and torch), NCCL's unique id, non-blocking init and one-rank collectives (which move no
# data), NCCL's group semantics with a non-blocking communicator (send and receive to itself) and the
# scatter's root cutting its own part (a shard-aware update on one GPU declares nothing: the reference
# worker keeps every tensor whole at TP 1), P2P staging through the page-locked host bucket, and throughput. What
# needs two GPUs: any NCCL broadcast, send or receive that moves data between GPUs (so the scatter of parts
# to other members, and the class relays over class communicators), sub-communicators of a subset of
# ranks, aborts with a dead or hung peer, cross-GPU IPC (a worker on another GPU opening the handle), and
# all of it at TP > 1 (the stand-in NCCL in the tests covers their logic on every CI machine).
# Results: one archive of every log, trace and JSON result, $OUT/gpu-check-results.tar.gz (under the
# work folder when OUT is unset; its path is printed). NCCL_DEBUG=WARN puts NCCL's warnings in the logs.
# Environment: PYTHON (default: the first of python3, /usr/bin/python3 that has torch),
# CKPT_ENGINE_NCCL_LIBRARY (default: the libnccl torch loads, else the nvidia-nccl wheel's, else ...),
# GPU_CHECK_BUDGET_S. GPU_CHECK_DRY_RUN=1 (no GPU needed): steps 3 and 4 run on the host backend with a
# small checkpoint (the Python half with GPU_CHECK_TORCH_DEVICE=cpu), step 5 is skipped, and a timeout
# self-test shows that a step that runs out is named.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
app="$here/app"
dry="${GPU_CHECK_DRY_RUN:-0}"
size="${1:-4GiB}"
[ "$dry" = 1 ] && size="${1:-64MiB}"
budget="${GPU_CHECK_BUDGET_S:-420}"
deadline=$((SECONDS + budget))
export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 # No ICU needed on the GPU machine.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
results="$work/gpu-check-results" # Archived: logs, traces, JSON.
data="$work/data"                 # Not archived: checkpoints, and what a killed step leaves in TMPDIR.
mkdir -p "$results" "$data"
export TMPDIR="$data"
archive="${OUT:+$OUT/gpu-check-results.tar.gz}"
archive="${archive:-$work/gpu-check-results.tar.gz}"
failed=0

say() { echo "gpu-check: $*" | tee -a "$results/console.log"; }

# Every step's outcome, one line each: STATUS<TAB>SECONDS<TAB>NAME<TAB>DETAIL.
record() {
  printf '%s\t%s\t%s\t%s\n' "$2" "${4:-0}" "$1" "$3" >>"$results/steps.tsv"
  case "$2" in PASS | SKIPPED) ;; *) failed=1 ;; esac # NOT RUN (no time left) fails too.
  say "$2: $1${3:+ — $3}"
}

# run LIMIT_S STDOUT STDERR COMMAND...: COMMAND under min(LIMIT_S, time left) seconds; sets rc, took, limit.
run() {
  limit=$1
  local out="$2" err="$3" left=$((deadline - SECONDS))
  shift 3
  if [ "$left" -lt 5 ]; then
    rc=125 took=0
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  rc=0
  timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$err" || rc=$?
  took=$((SECONDS - t0))
}

# outcome NAME DETAIL: records the last run's outcome (rc 0: PASS with DETAIL).
outcome() {
  case "$rc" in
    0) record "$1" PASS "$2" "$took" ;;
    124 | 137) record "$1" TIMEOUT "ran out of its $limit s (timeout exit $rc)${2:+; $2}" "$took" ;;
    125) record "$1" "NOT RUN" "no time left of the check's $budget s" ;;
    *) record "$1" FAIL "exit $rc${2:+; $2}" "$took" ;;
  esac
}

finish() {
  local code=$?
  [ "$failed" = 0 ] || code=1
  rm -rf "$data"
  if mkdir -p "$(dirname "$archive")" && tar -C "$work" -czf "$archive" gpu-check-results; then
    echo "gpu-check: results: $archive ($(du -k "$archive" | cut -f1) KiB)"
    rm -rf "$results"
    [ -n "${OUT:-}" ] && rm -rf "$work"
  else
    echo "gpu-check: could not write the results archive $archive; the results stay in $results"
  fi
  exit "$code"
}
trap finish EXIT
trap 'say "interrupted"; exit 130' INT TERM

say "payload $(du -sm "$here" | cut -f1) MiB; $("$app/ckpt-engine" --version 2>/dev/null || echo "ckpt-engine does not start"); size $size; budget $budget s; $([ "$dry" = 1 ] && echo "DRY RUN")"

# Python: one that has torch (the Python half needs it; the NCCL probe asks it).
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3 /usr/bin/python3; do
    if timeout 30 "$c" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then py="$c" && break; fi
  done
fi
py="${py:-python3}"
export PYTHON="$py"

# NCCL: the library torch loads (that one works with this driver), else the nvidia-nccl wheel's, the loader's,
# CUDA's, the virtualenv's or conda's; CKPT_ENGINE_NCCL_LIBRARY, when set, wins. The path goes to the C# side.
run 45 "$results/nccl-probe.txt" "$results/nccl-probe.err" "$py" - <<'PY'
import ctypes, glob, os, subprocess, sys
def maps():
    with open("/proc/self/maps") as f:
        return sorted({l.split()[-1] for l in f if "libnccl" in l and l.rstrip().split()[-1].startswith("/")})
candidates = []
if os.environ.get("CKPT_ENGINE_NCCL_LIBRARY"):
    candidates.append(("CKPT_ENGINE_NCCL_LIBRARY", os.environ["CKPT_ENGINE_NCCL_LIBRARY"]))
try:
    import torch
    try:
        v = torch.cuda.nccl.version()  # Calls ncclGetVersion: loads torch's libnccl when it links one dynamically.
        loaded = maps()
        print("torch %s: NCCL %s, %s" % (torch.__version__, ".".join(map(str, v)) if isinstance(v, tuple) else v,
              "loaded from " + ", ".join(loaded) if loaded else "linked in statically (no libnccl.so to share)"))
        candidates += [("torch", p) for p in loaded]
    except Exception as e:
        print("torch %s has no NCCL: %s" % (torch.__version__, e))
except Exception as e:
    print("no torch: %s" % e)
try:
    import nvidia.nccl as n
    candidates += [("nvidia-nccl wheel", os.path.join(p, "lib", "libnccl.so.2")) for p in n.__path__]
except Exception:
    pass
try:
    ld = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    candidates += [("ldconfig", l.split("=>")[-1].strip()) for l in ld.splitlines() if "libnccl.so.2" in l]
except Exception:
    pass
candidates += [(src, p) for src, root in (("VIRTUAL_ENV", os.environ.get("VIRTUAL_ENV")), ("CONDA_PREFIX", os.environ.get("CONDA_PREFIX"))) if root
               for p in sorted(glob.glob(os.path.join(root, "lib", "python3*", "*-packages", "nvidia", "nccl", "lib", "libnccl.so.2")) + [os.path.join(root, "lib", "libnccl.so.2")])]
candidates += [("system", p) for p in ("/usr/lib/x86_64-linux-gnu/libnccl.so.2", "/usr/local/cuda/lib64/libnccl.so.2", "/usr/lib64/libnccl.so.2")]
for src, path in candidates:
    if not os.path.isfile(path):
        print("tried %s: %s (missing)" % (src, path))
        continue
    try:
        code = ctypes.c_int()
        if ctypes.CDLL(path).ncclGetVersion(ctypes.byref(code)) != 0:
            raise OSError("ncclGetVersion failed")
        c = code.value
        major, minor, patch = (c // 10000, c % 10000 // 100, c % 100) if c >= 10000 else (c // 1000, c % 1000 // 100, c % 100)
        print("chosen\t%s\t%d.%d.%d\t%s" % (os.path.realpath(path), major, minor, patch, src))
        sys.exit(0)
    except (OSError, AttributeError) as e:
        print("tried %s: %s (%s)" % (src, path, e))
print("no libnccl.so.2 found")
PY
grep -v "^chosen" "$results/nccl-probe.txt" | sed 's/^/  /'
chosen="$(grep "^chosen" "$results/nccl-probe.txt" 2>/dev/null | head -1 || true)"
if [ -n "$chosen" ]; then
  IFS=$'\t' read -r _ nccl version source <<<"$chosen"
  export CKPT_ENGINE_NCCL_LIBRARY="$nccl"
  say "NCCL $version: $nccl (from $source; CKPT_ENGINE_NCCL_LIBRARY set to it)"
else
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && say "the NCCL probe ran out of its $limit s"
  # Without Python's help: the virtualenv's or conda's wheel, as the C# side would look.
  for root in "${VIRTUAL_ENV:-}" "${CONDA_PREFIX:-}"; do
    [ -z "${CKPT_ENGINE_NCCL_LIBRARY:-}" ] && [ -n "$root" ] || continue
    for f in "$root"/lib/python3*/*-packages/nvidia/nccl/lib/libnccl.so.2; do
      [ -f "$f" ] && export CKPT_ENGINE_NCCL_LIBRARY="$f" && break
    done
  done
  say "NCCL: $([ -n "${CKPT_ENGINE_NCCL_LIBRARY:-}" ] && echo "${CKPT_ENGINE_NCCL_LIBRARY} (version unknown)" || echo "none found here; ckpt-engine tries its own paths") — see nccl-probe.txt"
fi
{ command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi; } >"$results/nvidia-smi.txt" 2>&1 && say "$(timeout 10 nvidia-smi -L 2>/dev/null | head -4)"

say "1/6 the CLI starts (host backend)"
run 45 "$results/host.json" "$results/host.err" "$app/ckpt-engine" demo --device host --ranks 1 --size 8MiB --method broadcast --json
outcome "CLI starts" "$(tail -n 3 "$results/host.err" 2>/dev/null)"
[ "$rc" = 0 ] || exit 1 # Nothing else can run.

say "2/6 GPU unit tests"
run 90 "$results/tests.log" "$results/tests.err" "$app/CheckpointEngine.Tests" -trait "Category=GPU" -noColor
summary="$(grep -E 'Total:' "$results/tests.log" 2>/dev/null | tail -n 1 | sed 's/^ *//')"
if [ "$rc" = 0 ] && [ -z "$summary" ]; then
  rc=1 && outcome "GPU unit tests" "no test summary in tests.log"
elif [ "$rc" = 0 ] && [ "$dry" != 1 ] && ! grep -q "Skipped: 0," <<<"$summary"; then
  rc=1 && outcome "GPU unit tests" "tests skipped on a GPU machine: $summary"
  grep -B1 -A2 "\[SKIP\]" "$results/tests.log" | head -20
elif [ "$rc" = 0 ] && ! grep -q "Total: [1-9]" <<<"$summary"; then
  rc=1 && outcome "GPU unit tests" "the payload has no GPU-trait tests: $summary"
else
  outcome "GPU unit tests" "$summary$([ "$dry" = 1 ] && echo " (no GPU here: skipped)")"
  [ "$rc" = 0 ] || tail -n 40 "$results/tests.log" 2>/dev/null
fi

device=cuda torch_device=cuda
[ "$dry" = 1 ] && device=host torch_device=cpu
say "3/6 update of a $size checkpoint to the .NET worker on one $device device: broadcast, then P2P"
CKPT_ENGINE_MAX_BUCKET_SIZE_GB="${CKPT_ENGINE_MAX_BUCKET_SIZE_GB:-1}" run 120 "$results/demo.json" "$results/demo.err" \
  "$app/ckpt-engine" demo --device "$device" --ranks 1 --size "$size" --method all --json --trace "$results/demo-trace.json"
if [ "$rc" = 0 ] && ! "$py" - "$results/demo.json" <<'PY'; then
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if [l["method"] for l in lines] == ["broadcast", "p2p"] and all(l["verified"] for l in lines) else 1)
PY
  rc=1
fi
outcome ".NET worker update (broadcast + P2P)" "$( [ "$rc" = 0 ] && echo "both verified" || { tail -n 5 "$results/demo.err"; cat "$results/demo.json"; } 2>/dev/null )"

say "4/6 the same to the Python worker (torch on $torch_device, $py)"
CKPT_ENGINE_MAX_BUCKET_SIZE_GB="${CKPT_ENGINE_MAX_BUCKET_SIZE_GB:-1}" GPU_CHECK_TORCH_DEVICE="$torch_device" GPU_CHECK_LOGS="$results" \
  run 240 "$results/python.log" "$results/python.err" "$here/python/tests/gpu_check_worker.sh" "$app/ckpt-engine" "$size" "$data"
if [ "$rc" = 0 ]; then
  outcome "Python worker update (broadcast + P2P)" "$(grep '^python worker:' "$results/python.log" | tail -n 1)"
else
  outcome "Python worker update (broadcast + P2P)" "last phase: $(grep '^python half:' "$results/python.log" 2>/dev/null | tail -n 1)"
  [ "$rc" = 125 ] || tail -n 20 "$results/python.log" "$results/python.err"
fi

say "5/6 plain pinned cuMemcpyHtoD of $size (the figures' baseline)"
if [ "$dry" = 1 ]; then
  record "H2D baseline" SKIPPED "needs a GPU"
else
  run 60 "$results/baseline.txt" "$results/baseline.err" "$app/ckpt-engine" bench cuda-h2d-baseline "$size"
  outcome "H2D baseline" "$(cat "$results/baseline.txt" "$results/baseline.err" 2>/dev/null | tail -n 3)"
fi

bench_size=1GiB bench_repeat=5
[ "$dry" = 1 ] && bench_size=64MiB bench_repeat=1
say "6/6 host-backend figures on $(nproc) cores: bench of 2 ranks x $bench_size, one host and two"
# The host path's targets (memcpy and TCP ratios, shard-aware time) measured where the workers do not share two cores.
run 150 "$results/bench-host.json" "$results/bench-host.err" "$app/ckpt-engine" bench --device host --ranks 2 --size "$bench_size" \
  --method broadcast,p2p,p2p-join,tp-full,tp-sharded --repeat "$bench_repeat" --json --out "$results/bench-host.md"
if [ "$rc" = 0 ]; then
  run 150 "$results/bench-hosts.json" "$results/bench-hosts.err" "$app/ckpt-engine" bench --device host --ranks 2 --size "$bench_size" \
    --method tp-full,tp-sharded --repeat "$bench_repeat" --separate-hosts --json --out "$results/bench-hosts.md"
fi
if [ "$rc" = 125 ]; then
  record "host-backend figures" SKIPPED "no time left of the check's $budget s"
elif [ "$rc" = 0 ]; then
  # One line: each configuration's median seconds and its ratio to its baseline (memcpy or TCP, measured in the same run).
  "$py" - "$results/bench-host.json" "$results/bench-hosts.json" >"$results/bench-summary.txt" 2>&1 <<'PY' || rc=1
import json, sys
rows = []
for path, where in zip(sys.argv[1:], ("", " (two hosts)")):
    d = json.load(open(path))
    rows += ["%s%s %.3f s %.2fx %s" % (c["method"], where, c["seconds"]["median"], c["ratio_to_baseline"], c["baseline"]) for c in d["configurations"]]
print("%d cores: %s" % (d["machine"]["cores"], "; ".join(rows)))
PY
  outcome "host-backend figures" "$(cat "$results/bench-summary.txt")"
else
  outcome "host-backend figures" "$(tail -n 5 "$results/bench-host.err" "$results/bench-hosts.err" 2>/dev/null)"
fi

if [ "$dry" = 1 ]; then
  say "dry run: timeout self-test (a step of 2 s that runs for 60 s must be named)"
  run 2 "$results/timeout-selftest.log" "$results/timeout-selftest.log" sleep 60
  if [ "$rc" = 124 ]; then record "timeout self-test" PASS "step 'sleep 60' was stopped at its 2 s limit (exit 124)" "$took"
  elif [ "$rc" = 125 ]; then outcome "timeout self-test"
  else record "timeout self-test" FAIL "exit $rc instead of 124"; fi
fi

say "figures (reported, never failing the run):"
"$py" - "$results/demo.json" "$results/baseline.txt" "$results/figures.json" "$results/python.log" <<'PY' | tee -a "$results/console.log"
import json, os, sys
demo, baseline, out, python = sys.argv[1:]
lines = [json.loads(l) for l in open(demo) if l.strip()] if os.path.exists(demo) else []
base = dict(kv.split("=", 1) for kv in open(baseline).read().split()) if os.path.exists(baseline) else {}
torch_line = [l.strip() for l in open(python) if l.startswith("torch baseline:")][-1:] if os.path.exists(python) else []
figures = {"methods": lines, "pinned_h2d_gbps": float(base["gbps"]) if "gbps" in base else None, "h2d_ratio_target": 0.9,
           "torch_baseline": torch_line[0] if torch_line else None}
print("  " + (torch_line[0] if torch_line else "torch baseline: not measured (see python.log)"))
for d in lines:
    if not d.get("bytes"):
        continue
    h2d = d["bytes"] / d["stage_seconds"] / 1e9 if d["stage_seconds"] else float("nan")
    ratio = h2d / figures["pinned_h2d_gbps"] if figures["pinned_h2d_gbps"] else None
    stage = "H2D" if d["method"] == "broadcast" else "P2P read"
    if d["method"] == "broadcast":
        figures["h2d_gbps"], figures["h2d_ratio"] = h2d, ratio
        print("  %s stage %.2f GB/s, pinned cuMemcpyHtoD %s: ratio %s (target >= 0.9)" % (
            stage, h2d, "%.2f GB/s" % figures["pinned_h2d_gbps"] if ratio else "not measured",
            "%.2f%s" % (ratio, "" if ratio >= 0.9 else " BELOW TARGET") if ratio else "n/a"))
    print("  %s: wall %.3f s (%.2f GB/s) = stage sums: %s %.3f s, broadcast %.3f s, reload %.3f s; pipeline efficiency %.2f; first update %.3f s"
          % (d["method"], d["seconds"], d["gbps"], stage, d["stage_seconds"], d["broadcast_seconds"], d["reload_seconds"], d["efficiency"], d["first_seconds"]))
if not lines:
    print("  none: the .NET worker update gave no figures")
json.dump(figures, open(out, "w"), indent=1)
PY

say "results per step:"
while IFS=$'\t' read -r status seconds name detail; do
  printf '  %-8s %4s s  %s\n' "$status" "$seconds" "$name" | tee -a "$results/console.log"
done <"$results/steps.tsv"
[ "$failed" = 0 ] && say "PASS" || say "FAILED"
exit "$failed"
