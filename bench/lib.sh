# shellcheck shell=bash
# What the benchmark scripts share: free ports, waiting for Redis to answer,
# cleaning up what they started, and the other proxies in front of Redis.

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

# Processes that answer on PORT: the PIDs of the listener's tree, for
# memory figures (nginx serves from worker processes under its master).
tree_pids() {
  local p kids
  echo "$1"
  kids=$(cat /proc/"$1"/task/*/children 2>/dev/null || true)
  for p in $kids; do tree_pids "$p"; done
}

# pss_kib PID: proportional set size of PID and its children, in KiB. PSS
# splits shared pages (nginx's workers share the master's) between the
# processes, so a multi-process server is not counted several times.
pss_kib() {
  local p total=0 kib
  for p in $(tree_pids "$1"); do
    kib=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# cpu_ticks PID: CPU time (user and system, in clock ticks) that PID, its
# reaped children and its live descendants have used: socat's forked
# children are reaped as they finish, nginx's workers live on.
cpu_ticks() {
  local p total=0 t
  for p in $(tree_pids "$1"); do
    # Fields 14-17 (utime stime cutime cstime), counted after the command
    # name, which is in parentheses and may hold spaces.
    t=$(sed 's/.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12 + $13 + $14 + $15}')
    total=$((total + ${t:-0}))
  done
  echo "$total"
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

# start_nginx REDIS_PORT MAXCONN: nginx's stream module (one worker per
# core, no access log) in front of Redis. Runs in the foreground so that
# its master's PID is ours to stop.
start_nginx() {
  local port dir=$BENCH_TMP/nginx
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes $(nproc);
worker_rlimit_nofile $(($2 * 2 + 64));
pid $dir/nginx.pid;
error_log $dir/error.log error;
events { worker_connections $(($2 * 2)); }
stream {
  access_log off;
  server {
    listen 127.0.0.1:$port backlog=1024;
    proxy_pass 127.0.0.1:$1;
    tcp_nodelay on;
  }
}
CFG
  nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  BENCH_PORT=$port
  wait_ping "$port"
}

# start_socat REDIS_PORT: socat forking one process per connection, with
# TCP_NODELAY both ways (without it, 16 KiB values crawl) and a backlog
# that does not stall new connections on SYN retries.
start_socat() {
  local port
  port=$(free_port)
  socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr,backlog=1024,nodelay" \
    "TCP:127.0.0.1:$1,nodelay" &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  BENCH_PORT=$port
  wait_ping "$port"
}
