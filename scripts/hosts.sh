#!/usr/bin/env bash
# Several "hosts" on this machine for multi-host runs and tests: each host is a network namespace
# with its own veth link and private address (10.77.X.(I+1)/24) on a bridge that lives in a namespace
# of its own (no interface of the machine's own namespace is touched; no traffic leaves the machine),
# a mount namespace with a private /dev/shm and its own hostname. Needs root, iproute2, util-linux.
#
#   scripts/hosts.sh check                    what this kernel offers (netns, veth, bridge, tbf, netem)
#   scripts/hosts.sh up WORLD N [X]           N hosts named WORLD-h0 … (X: third octet, default from WORLD);
#                                             prints "host I NETNS ADDRESS" per host
#   scripts/hosts.sh run WORLD I CMD [ARG…]   runs CMD inside host I (its network, /dev/shm, hostname)
#   scripts/hosts.sh link WORLD I up|down     plugs or pulls host I's cable (the switch's port)
#   scripts/hosts.sh shape WORLD I RATE|off   rate-limits host I's link both ways with tc tbf (RATE as tc
#                                             writes it: 500mbit, 1gbit); netem is not used (often missing)
#   scripts/hosts.sh kill WORLD I             SIGKILLs every process in host I at once (a machine failure)
#   scripts/hosts.sh down WORLD               kills every process inside, removes namespaces and links
#   scripts/hosts.sh sweep [MINUTES]          downs every ckpt-* world older than MINUTES (default 60)
#   scripts/hosts.sh bench [--mib N] [--bucket-mib N] [--shape RATE] [--transports tcp,ucx] [--out FILE.md] [--configuration C]
#                                             the cross-host bench (the multi-host tests' runner, its own world): raw TCP
#                                             stream per link, broadcast hosts 0↔1, P2P join from host 2 per transport; prints a
#                                             Markdown table (per-worker GB/s, ratio to the raw stream); FILE.trace.json beside it
# WORLD must start with "ckpt-" (sweep finds leftovers by that prefix). Example:
#   sudo scripts/hosts.sh up ckpt-demo 2 && sudo scripts/hosts.sh run ckpt-demo 1 ping -c1 10.77.N.1
set -euo pipefail

die() { echo "hosts.sh: $*" >&2; exit 2; }
state_dir() { echo "/run/ckpt-hosts/$1"; }
switch_ns() { echo "$1-sw"; }
host_ns() { echo "$1-h$2"; }
need_world() {
  [[ "${1:-}" =~ ^ckpt-[A-Za-z0-9_-]{1,40}$ ]] || die "world name '${1:-}' must be ckpt-<letters, digits, - or _> (at most 40)"
}
need_host() {
  [[ "${2:-}" =~ ^[0-9]+$ ]] || die "host index '${2:-}' is not a number"
  [ -e "/run/netns/$(host_ns "$1" "$2")" ] || die "no host $2 in world $1 (scripts/hosts.sh up $1 N first)"
}

check() {
  local ns="ckpt-check-$$" ok=0
  [ "$(id -u)" = 0 ] || { echo "not root: network namespaces need root"; return 1; }
  ip netns add "$ns" 2>/dev/null && echo "netns: yes" || { echo "netns: no (ip netns add failed)"; return 1; }
  trap 'ip netns del "$ns" 2>/dev/null || true' RETURN
  ip -n "$ns" link add br0 type bridge 2>/dev/null && echo "bridge: yes" || { echo "bridge: no"; ok=1; }
  ip -n "$ns" link add va type veth peer name vb 2>/dev/null && echo "veth: yes" || { echo "veth: no"; ok=1; }
  ip -n "$ns" link set va up 2>/dev/null || true
  ip netns exec "$ns" unshare --mount --uts --propagation private -- sh -c 'mount -t tmpfs tmpfs /dev/shm && hostname x' 2>/dev/null \
    && echo "private /dev/shm and hostname: yes" || { echo "private /dev/shm and hostname: no (unshare --mount --uts)"; ok=1; }
  tc -n "$ns" qdisc add dev va root tbf rate 100mbit burst 256kb latency 50ms 2>/dev/null && echo "tc tbf: yes" || { echo "tc tbf: no"; ok=1; }
  tc -n "$ns" qdisc replace dev va root netem delay 1ms 2>/dev/null && echo "tc netem: yes" || echo "tc netem: no (sch_netem not in this kernel: no delay or loss shaping)"
  return $ok
}

up() {
  need_world "$1"
  local world=$1 n=$2 x=${3:-$(( $(cksum <<<"$1" | cut -d' ' -f1) % 250 + 1 ))}
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "host count '$n' is not in [1, 200]"
  local sw; sw=$(switch_ns "$world")
  ip netns add "$sw" || die "world $world exists already (or ip netns add failed)"
  mkdir -p "$(state_dir "$world")"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" addr add "10.77.$x.254/24" dev br0
  ip -n "$sw" link set br0 up
  for ((i = 0; i < n; i++)); do
    local ns; ns=$(host_ns "$world" "$i")
    ip netns add "$ns"
    ip -n "$sw" link add "h$i" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "h$i" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.77.$x.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    # The holder keeps the host's mount and UTS namespaces (private /dev/shm, hostname) for `run` to enter.
    local pidfile; pidfile="$(state_dir "$world")/h$i.pid"
    setsid ip netns exec "$ns" unshare --mount --uts --propagation private -- sh -c \
      "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && hostname '$ns' && echo \$\$ > '$pidfile.tmp' && mv '$pidfile.tmp' '$pidfile' && exec sleep infinity" \
      </dev/null >/dev/null 2>&1 &
    for ((t = 0; t < 200; t++)); do [ -s "$pidfile" ] && break; sleep 0.05; done
    [ -s "$pidfile" ] || die "host $i: the namespace holder did not start (unshare --mount --uts)"
    echo "host $i $ns 10.77.$x.$((i + 1))"
  done
}

run() {
  need_world "$1"; need_host "$1" "$2"
  local pid; pid=$(cat "$(state_dir "$1")/h$2.pid")
  shift 2
  exec nsenter --target "$pid" --net --mount --uts --wd="$PWD" -- "$@"
}

link() {
  need_world "$1"; need_host "$1" "$2"
  [[ "$3" == up || "$3" == down ]] || die "link state '$3' is neither up nor down"
  ip -n "$(switch_ns "$1")" link set "h$2" "$3"
}

shape() {
  need_world "$1"; need_host "$1" "$2"
  local sw ns; sw=$(switch_ns "$1"); ns=$(host_ns "$1" "$2")
  if [ "$3" = off ]; then
    tc -n "$sw" qdisc del dev "h$2" root 2>/dev/null || true
    tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
    return
  fi
  [[ "$3" =~ ^[0-9]+(k|m|g)?bit$ ]] || die "rate '$3' is not like 500mbit or 1gbit"
  # A burst of at least 256 KiB: veth hands tbf 64 KiB segments, and a smaller bucket would drop them all.
  tc -n "$sw" qdisc replace dev "h$2" root tbf rate "$3" burst 256kb latency 100ms
  tc -n "$ns" qdisc replace dev eth0 root tbf rate "$3" burst 256kb latency 100ms
}

kill_host() {
  need_world "$1"; need_host "$1" "$2"
  local holder; holder=$(cat "$(state_dir "$1")/h$2.pid")
  ip netns pids "$(host_ns "$1" "$2")" | grep -vx "$holder" | xargs -r kill -9
}

down() {
  need_world "$1"
  local world=$1
  for ns in $(ip netns list | awk '{print $1}' | grep "^$world-\(h[0-9]*\|sw\)$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$(state_dir "$world")"
}

sweep() {
  local minutes=${1:-60}
  for ns in $(ip netns list | awk '{print $1}' | grep '^ckpt-.*-sw$' || true); do
    if [ -n "$(find "/run/netns/$ns" -maxdepth 0 -mmin +"$minutes" 2>/dev/null)" ]; then
      down "${ns%-sw}"
    fi
  done
}

bench() {
  local mib=64 bucket=8 shape=off transports=tcp,ucx out="" config=Release
  while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "bench: $1 needs a value"
    case "$1" in
      --mib) mib=$2 ;; --bucket-mib) bucket=$2 ;; --shape) shape=$2 ;; --transports) transports=$2 ;; --out) out=$2 ;; --configuration) config=$2 ;;
      *) die "bench: unknown option '$1'" ;;
    esac
    shift 2
  done
  [[ "$mib" =~ ^[0-9]+$ ]] || die "bench: --mib '$mib' is not a whole number"
  [[ "$bucket" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bench: --bucket-mib '$bucket' is not a number"
  [[ "$shape" == off || "$shape" =~ ^[0-9]+(k|m|g)?bit$ ]] || die "bench: --shape '$shape' is not off or like 400mbit"
  local root tests
  root=$(cd "$(dirname "$0")/.." && pwd)
  tests="$root/tests/CheckpointEngine.IntegrationTests"
  out=${out:-$(mktemp -d /tmp/ckpt-hosts-bench.XXXXXX)/bench.md}
  dotnet build "$tests" -c "$config" -v q -clp:ErrorsOnly --nologo >&2
  CKPT_HOSTS_BENCH=1 CKPT_HOSTS_BENCH_MIB=$mib CKPT_HOSTS_BENCH_BUCKET_MIB=$bucket CKPT_HOSTS_BENCH_SHAPE=$shape \
    CKPT_HOSTS_BENCH_TRANSPORTS=$transports CKPT_HOSTS_BENCH_OUT=$out \
    dotnet test --project "$tests" -c "$config" --no-build -- --filter-method '*Bench_AcrossHosts*' >&2 || die "bench: the run failed (its output is above)"
  cat "$out"
  echo "(table in $out, the broadcast's trace in ${out%.*}.trace.json)" >&2
}

[ "$(id -u)" = 0 ] || [ "${1:-}" = check ] || die "needs root (network namespaces)"
case "${1:-}" in
  check) check ;;
  up) [ $# -ge 3 ] || die "usage: up WORLD N [X]"; up "$2" "$3" "${4:-}" ;;
  run) [ $# -ge 4 ] || die "usage: run WORLD I CMD [ARG...]"; shift; run "$@" ;;
  link) [ $# -eq 4 ] || die "usage: link WORLD I up|down"; link "$2" "$3" "$4" ;;
  shape) [ $# -eq 4 ] || die "usage: shape WORLD I RATE|off"; shape "$2" "$3" "$4" ;;
  kill) [ $# -eq 3 ] || die "usage: kill WORLD I"; kill_host "$2" "$3" ;;
  down) [ $# -eq 2 ] || die "usage: down WORLD"; down "$2" ;;
  sweep) sweep "${2:-60}" ;;
  bench) shift; bench "$@" ;;
  *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
