#!/bin/bash
# One owner and one reader process on this host; prints the reader's GB/s per round. E.g. ./run.sh tag 1073741824 5 UCX_TLS=^tcp
set -e
cd "$(dirname "$0")"
mode=${1:?get or tag}; size=${2:-1073741824}; rounds=${3:-5}; shift 3 || shift $#
[ -x onehost ] || gcc -O2 -o onehost onehost.c -lucp -lucs
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
env "$@" timeout 300 ./onehost owner "$dir" "$size" &
owner=$!
env "$@" timeout 300 ./onehost reader "$dir" "$size" "$mode" "$rounds"
wait $owner
