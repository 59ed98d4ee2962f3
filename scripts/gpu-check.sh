#!/usr/bin/env bash
# The GPU check, in two halves (the GPU machine has CUDA, NCCL and Python with torch, but no .NET and
# no network):
#   scripts/gpu-check.sh build [OUT]   on a development machine: builds a self-contained linux-x64
#                                      payload of the CLI and the tests (default OUT: artifacts/gpu-check.tar.xz)
#   scripts/gpu-check.sh dry-run       build, unpack (GPU_CHECK_UNPACK=python: with Python's tarfile) and run
#                                      the payload here with GPU_CHECK_DRY_RUN=1 (host backend where a GPU is
#                                      needed), then list the results archive it wrote
# and on the GPU machine (from a copy of the repository with artifacts/gpu-check.tar.xz in it):
#   scripts/gpu-check.sh run [PAYLOAD] [SIZE]   unpack (xz, or Python's tarfile where there is no xz) and
#                                               run gpu-check/run.sh [SIZE] (SIZE default 4GiB)
# or by hand:  mkdir -p D && xz -dc gpu-check.tar.xz | tar -C D -xf - && D/gpu-check/run.sh
#   without xz: python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' gpu-check.tar.xz D
# run.sh's header says what one GPU covers and what needs two; it ends within GPU_CHECK_BUDGET_S (420 s)
# and writes every log, trace and JSON result to $OUT/gpu-check-results.tar.gz.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
limit=$((60 << 20))

build() {
  local out="${1:-$root/artifacts/gpu-check.tar.xz}"
  local stage
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' RETURN
  local dir="$stage/gpu-check"
  mkdir -p "$dir/app"
  for project in src/CheckpointEngine.Cli/CheckpointEngine.Cli.csproj tests/CheckpointEngine.Tests/CheckpointEngine.Tests.csproj; do
    dotnet publish "$root/$project" -c Release -r linux-x64 --self-contained -o "$dir/app" --nologo -v q -clp:ErrorsOnly \
      -p:DebugType=none -p:SatelliteResourceLanguages=en
  done
  if [ -d "$root/python" ]; then
    cp -r "$root/python" "$dir/python"
    find "$dir/python" -name __pycache__ -prune -exec rm -rf {} +
  fi
  cp "$root/scripts/gpu-check-run.sh" "$dir/run.sh"
  chmod +x "$dir/run.sh"
  mkdir -p "$(dirname "$out")"
  tar -C "$stage" -cf - gpu-check | xz -T0 -6 > "$out"
  local bytes
  bytes=$(stat -c %s "$out")
  echo "gpu-check payload: $out, $((bytes >> 20)) MiB compressed ($(du -sm "$dir" | cut -f1) MiB unpacked)"
  if [ "$bytes" -gt "$limit" ]; then
    echo "gpu-check payload is over the $((limit >> 20)) MiB limit" >&2
    return 1
  fi
}

# unpack PAYLOAD DIR: with xz where there is one, else with Python's tarfile (the GPU machine may lack xz).
unpack() {
  if [ "${GPU_CHECK_UNPACK:-xz}" != python ] && command -v xz >/dev/null; then
    echo "gpu-check: unpacking $1 with xz"
    xz -dc "$1" | tar -C "$2" -xf -
  else
    echo "gpu-check: unpacking $1 with Python's tarfile"
    "${PYTHON:-python3}" -c 'import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' "$1" "$2"
  fi
}

case "${1:-}" in
  build)
    shift
    build "$@"
    ;;
  dry-run)
    payload="$root/artifacts/gpu-check.tar.xz"
    build "$payload"
    where="$(mktemp -d)"
    trap 'rm -rf "$where"' EXIT
    unpack "$payload" "$where"
    # As on the GPU machine, but with no OUT: the archive stays in run.sh's work folder, whose path it prints.
    code=0
    env -u OUT GPU_CHECK_DRY_RUN=1 "$where/gpu-check/run.sh" | tee "$where/console.txt" || code=$?
    results="$(sed -n 's/^gpu-check: results: \(.*\) ([0-9]* KiB)$/\1/p' "$where/console.txt")"
    [ -f "$results" ] || { echo "gpu-check: dry run: no results archive" >&2; exit 1; }
    listing="$(tar -tzf "$results")"
    echo "gpu-check: dry run: $results holds $(echo "$listing" | grep -c -v '/$') files: $(echo "$listing" | sed -n 's|^gpu-check-results/\(.\)|\1|p' | tr '\n' ' ')"
    for f in console.log steps.tsv nccl-probe.txt host.json tests.log demo.json demo-trace.broadcast.json demo-trace.p2p.json \
      python.log python-updates.log python-worker-bf16.err python-trace.p2p.json figures.json bench-host.md bench-hosts.md bench-host.json bench-hosts.json; do
      grep -qx "gpu-check-results/$f" <<<"$listing" || { echo "gpu-check: dry run: the results archive lacks $f" >&2; code=1; }
    done
    exit "$code"
    ;;
  run)
    payload="${2:-$root/artifacts/gpu-check.tar.xz}"
    where="$(mktemp -d)"
    trap 'rm -rf "$where"' EXIT
    unpack "$payload" "$where"
    "$where/gpu-check/run.sh" ${3:+"$3"}
    ;;
  *)
    echo "usage: $0 build [OUT] | dry-run | run [PAYLOAD] [SIZE]" >&2
    exit 2
    ;;
esac
