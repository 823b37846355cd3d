#!/usr/bin/env bash
# Data-plane throughput: redis-benchmark (-c 50) straight to Redis and
# through each proxy, interleaved round by round, median of ROUNDS; prints
# requests/s and the ratios to direct and to HAProxy.
#   bench/redis.sh [REQUESTS] [VALUE_SIZE...]        (defaults: 200000, 3)
# Environment:
#   OLD_BIN   another mesh-amb binary to compare (e.g. built from an older
#             commit in a separate worktree); skipped when unset
#   HAPROXY=0 skip HAProxy (measured when `haproxy` is installed; nbthread =
#             cores, tcp mode)
#   ROUNDS    rounds per figure (default 3)
# Client, proxies and Redis share this machine's cores, so only ratios
# measured in the same run mean anything.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
shift || true
sizes=("${@:-3}")
rounds=${ROUNDS:-3}

# A port nothing listens on right now (no python needed).
free_port() {
  local p
  while :; do
    # Below the ephemeral range (32768-60999), where client sockets live.
    p=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
# redis-benchmark spins a core for minutes against a port that refuses
# connections: check first.
wait_ping() {
  for _ in $(seq 100); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
  echo "port $1 does not answer PING" >&2
  exit 1
}

cargo build --release -q
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
pids+=($!)
wait_ping "$rport"

names=(direct)
ports=("$rport")
start_amb() { # name binary
  local port
  port=$(free_port)
  RUST_LOG=error "$2" --consume "redis:$port=127.0.0.1:$rport" &
  pids+=($!)
  wait_ping "$port"
  names+=("$1")
  ports+=("$port")
}
start_amb mesh-amb target/release/mesh-amb
if [ -n "${OLD_BIN:-}" ]; then start_amb old "$OLD_BIN"; fi
if [ "${HAPROXY:-1}" != 0 ] && command -v haproxy >/dev/null; then
  hport=$(free_port)
  cat >"$tmp/haproxy.cfg" <<CFG
global
  maxconn 4096
  nbthread $(nproc)
defaults
  mode tcp
  option tcp-smart-accept
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen redis
  bind 127.0.0.1:$hport
  server r1 127.0.0.1:$rport
CFG
  haproxy -db -f "$tmp/haproxy.cfg" >/dev/null 2>&1 &
  pids+=($!)
  wait_ping "$hport"
  names+=(haproxy)
  ports+=("$hport")
fi

rps() { # port test size -> requests per second
  timeout 300 redis-benchmark -p "$1" -t "$2" -d "$3" -c 50 -n "$requests" -q \
    | tr '\r' '\n' | awk -v t="${2^^}" '$1 == t":" && /requests per second/ {print $2}'
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

printf '%-5s %6s %-9s %12s %9s %11s\n' test size proxy 'requests/s' 'x direct' 'x haproxy'
for size in "${sizes[@]}"; do
  for t in set get; do
    declare -A got=()
    for ((r = 1; r <= rounds; r++)); do
      for i in "${!names[@]}"; do
        got[$i]="${got[$i]:-} $(rps "${ports[$i]}" "$t" "$size")"
      done
    done
    declare -A med=()
    for i in "${!names[@]}"; do
      # shellcheck disable=SC2086 # one word per round
      med[$i]=$(median ${got[$i]})
    done
    h=0
    for i in "${!names[@]}"; do [ "${names[$i]}" = haproxy ] && h=${med[$i]}; done
    for i in "${!names[@]}"; do
      printf '%-5s %6s %-9s %12s %9s %11s\n' "$t" "$size" "${names[$i]}" "${med[$i]}" \
        "$(ratio "${med[$i]}" "${med[0]}")" "$(ratio "${med[$i]}" "$h")"
    done
    unset got med
  done
done
