#!/usr/bin/env bash
# Data-plane throughput: redis-benchmark straight to Redis vs through
# mesh-amb, on loopback. Prints requests/s and the ratio to direct.
#   bench/redis.sh [REQUESTS] [VALUE_SIZE...]
# Client, proxy and Redis share this machine's cores, as in the figures of
# ../shared/DESIGN.md, so ratios are comparable with those.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
shift || true
sizes=("${@:-3}")
[ "${#sizes[@]}" -gt 0 ] || sizes=(3)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release -q
rport=$(free_port)
aport=$(free_port)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
pids+=($!)
RUST_LOG=warn target/release/mesh-amb --consume "redis:$aport=127.0.0.1:$rport" &
pids+=($!)
for port in "$rport" "$aport"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  redis-cli -p "$port" ping | grep -q PONG || { echo "port $port does not answer PING" >&2; exit 1; }
done

rps() { # port test size -> requests per second
  timeout 300 redis-benchmark -p "$1" -t "$2" -d "$3" -c 50 -n "$requests" -q \
    | tr '\r' '\n' | awk -v t="${2^^}" '$1 == t":" && /requests per second/ {print $2}'
}

printf '%-6s %8s %14s %14s %7s\n' test size direct mesh-amb ratio
for size in "${sizes[@]}"; do
  for t in set get; do
    d=$(rps "$rport" "$t" "$size")
    a=$(rps "$aport" "$t" "$size")
    printf '%-6s %8s %14s %14s %7.2f\n' "$t" "$size" "$d" "$a" "$(awk -v a="$a" -v d="$d" 'BEGIN{print a/d}')"
  done
done
