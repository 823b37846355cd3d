# shellcheck shell=bash
# What the benchmark scripts share: free ports, waiting for Redis to answer,
# cleaning up what they started, and an HAProxy in front of Redis.

# A port nothing listens on right now (no python needed), below the
# ephemeral range (32768-60999), where client sockets live.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# redis-benchmark spins a core for minutes against a port that refuses
# connections: wait until PING answers, or give up.
wait_ping() {
  for _ in $(seq 100); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
  echo "port $1 does not answer PING" >&2
  exit 1
}

# Every benchmark process goes into BENCH_PIDS; BENCH_TMP is removed.
BENCH_PIDS=()
BENCH_TMP=$(mktemp -d)
bench_cleanup() {
  for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$BENCH_TMP"
}
trap bench_cleanup EXIT

# The start_* functions run in this shell (not in $(...), which would lose
# the PIDs) and leave the new server's port in BENCH_PORT, its PID in
# BENCH_PID.

# start_redis [ARGS...]: a fresh redis-server on loopback.
start_redis() {
  BENCH_PORT=$(free_port)
  redis-server --port "$BENCH_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$BENCH_TMP" "$@" >/dev/null &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  wait_ping "$BENCH_PORT"
}

# start_amb BINARY BACKEND [ARGS...]: that mesh-amb binary in front of
# BACKEND (HOST:PORT, or tls://HOST:PORT), with ARGS added.
start_amb() {
  local bin=$1 backend=$2
  shift 2
  BENCH_PORT=$(free_port)
  RUST_LOG=error "$bin" --consume "redis:$BENCH_PORT=$backend" "$@" &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  wait_ping "$BENCH_PORT"
}

# start_amb_tls BINARY REDIS_PORT: two mesh-amb nodes holding one cluster
# key, a provider (TLS terminator on a fixed port) and a consumer dialing
# it as a tls:// static backend: the price of the mutual TLS hop.
start_amb_tls() {
  local key=$BENCH_TMP/cluster.key tls_port
  tls_port=$(free_port)
  [ -f "$key" ] || "$1" keygen "$key" >/dev/null
  RUST_LOG=error "$1" --cluster-key "$key" --interface lo --provide "redis:$2@$tls_port" &
  BENCH_PIDS+=("$!")
  start_amb "$1" "tls://127.0.0.1:$tls_port" --cluster-key "$key"
}

# start_haproxy REDIS_PORT MAXCONN: an HAProxy (tcp mode, one thread per
# core) in front of Redis.
start_haproxy() {
  local port
  port=$(free_port)
  cat >"$BENCH_TMP/haproxy.cfg" <<CFG
global
  maxconn $2
  nbthread $(nproc)
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen redis
  bind 127.0.0.1:$port
  server r1 127.0.0.1:$1
CFG
  haproxy -db -f "$BENCH_TMP/haproxy.cfg" >/dev/null 2>&1 &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  BENCH_PORT=$port
  wait_ping "$port"
}
