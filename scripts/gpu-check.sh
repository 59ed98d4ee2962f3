#!/usr/bin/env bash
# The GPU check, in two halves (the GPU machine has CUDA, NCCL and Python with torch, but no .NET and
# no network):
#   scripts/gpu-check.sh build [OUT]   on a development machine: builds a self-contained linux-x64
#                                      payload of the CLI and the tests (default OUT: artifacts/gpu-check.tar.xz)
#   scripts/gpu-check.sh dry-run       build, then run the payload here up to the point where it needs a GPU
# and on the GPU machine:
#   tar xJf gpu-check.tar.xz && gpu-check/run.sh [SIZE]      (SIZE of the synthetic checkpoint, default 4GiB)
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
    tar -C "$where" -xJf "$payload"
    GPU_CHECK_DRY_RUN=1 "$where/gpu-check/run.sh"
    ;;
  *)
    echo "usage: $0 build [OUT] | dry-run" >&2
    exit 2
    ;;
esac
