#!/usr/bin/env bash
# Memory per idle connection: RSS growth of a proxy in front of Redis after
# CONNS clients each moved one VALUE-byte value both ways (SET then GET) and
# went idle. Compares the mesh-amb built here with others in the same run:
#   bench/idle-memory.sh [CONNS] [VALUE]
# Environment:
#   OLD_BIN   another mesh-amb binary to compare (e.g. built from an older
#             commit in a separate worktree); skipped when unset
#   HAPROXY=0 skip HAProxy (measured when `haproxy` is installed)
#   NGINX=0   skip nginx (measured when `nginx` is installed, with its
#             stream module: libnginx-mod-stream)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-2000}
value=${2:-61440}

# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release -q
cargo test --release -q --test idle_memory --no-run 2>/dev/null
# Clients and proxies each hold CONNS descriptors and more.
ulimit -n "$(ulimit -Hn)"

start_redis --maxclients $((conns * 4))
rport=$BENCH_PORT
targets=()
if [ -n "${OLD_BIN:-}" ]; then
  start_amb "$OLD_BIN" "127.0.0.1:$rport"
  targets+=("old=127.0.0.1:$BENCH_PORT/$BENCH_PID")
fi
start_amb "${CARGO_TARGET_DIR:-target}/release/mesh-amb" "127.0.0.1:$rport"
targets+=("new=127.0.0.1:$BENCH_PORT/$BENCH_PID")
if [ "${HAPROXY:-1}" != 0 ] && command -v haproxy >/dev/null; then
  start_haproxy "$rport" $((conns * 2))
  targets+=("haproxy=127.0.0.1:$BENCH_PORT/$BENCH_PID")
fi
if [ "${NGINX:-1}" != 0 ] && command -v nginx >/dev/null; then
  start_nginx "$rport" $((conns * 2))
  targets+=("nginx=127.0.0.1:$BENCH_PORT/$BENCH_PID")
fi

echo "$conns connections, one $value-byte value each way, then idle"
IDLE_MEMORY_TARGETS="${targets[*]}" IDLE_MEMORY_CONNS="$conns" IDLE_MEMORY_VALUE="$value" \
  cargo test --release -q --test idle_memory -- --ignored --nocapture 2>&1 \
  | grep -v -e '^running' -e '^test result' -e '^$' -e '^\.'
