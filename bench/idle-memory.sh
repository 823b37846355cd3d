#!/usr/bin/env bash
# Memory per idle connection: RSS growth of a proxy in front of Redis after
# CONNS clients each moved one VALUE-byte value both ways (SET then GET) and
# went idle. Compares the mesh-amb built here with others in the same run:
#   bench/idle-memory.sh [CONNS] [VALUE]
# Environment:
#   OLD_BIN   another mesh-amb binary to compare (e.g. built from an older
#             commit in a separate worktree); skipped when unset
#   HAPROXY=0 skip HAProxy (measured when `haproxy` is installed)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-2000}
value=${2:-61440}

# A port nothing listens on right now (no python needed).
free_port() {
  local p
  while :; do
    # Below the ephemeral range (32768-60999), where client sockets live.
    p=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
wait_ping() {
  for _ in $(seq 100); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
  echo "port $1 does not answer PING" >&2
  exit 1
}

cargo build --release -q
cargo test --release -q --test idle_memory --no-run 2>/dev/null
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
# Clients and proxies each hold CONNS descriptors and more.
ulimit -n "$(ulimit -Hn)"

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
  --maxclients $((conns * 4)) >/dev/null &
pids+=($!)
wait_ping "$rport"

targets=()
start_amb() { # name binary
  local port
  port=$(free_port)
  RUST_LOG=warn "$2" --consume "redis:$port=127.0.0.1:$rport" &
  pids+=($!)
  wait_ping "$port"
  targets+=("$1=127.0.0.1:$port/$!")
}
if [ -n "${OLD_BIN:-}" ]; then start_amb old "$OLD_BIN"; fi
start_amb new target/release/mesh-amb
if [ "${HAPROXY:-1}" != 0 ] && command -v haproxy >/dev/null; then
  hport=$(free_port)
  cat >"$tmp/haproxy.cfg" <<CFG
global
  maxconn $((conns * 2))
defaults
  mode tcp
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
  targets+=("haproxy=127.0.0.1:$hport/$!")
fi

echo "$conns connections, one $value-byte value each way, then idle"
IDLE_MEMORY_TARGETS="${targets[*]}" IDLE_MEMORY_CONNS="$conns" IDLE_MEMORY_VALUE="$value" \
  cargo test --release -q --test idle_memory -- --ignored --nocapture 2>&1 \
  | grep -v -e '^running' -e '^test result' -e '^$' -e '^\.'
