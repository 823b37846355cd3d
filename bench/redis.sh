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
#   TLS=0     skip mesh-amb-tls (a keyed provider and consumer: the mutual
#             TLS hop between ambassadors). With it, the whole run moves
#             into a private network namespace (needs root): the provider
#             advertises over mDNS, which must reach no real network.
# Client, proxies and Redis share this machine's cores, so only ratios
# measured in the same run mean anything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${TLS:-1}" != 0 ] && [ -z "${BENCH_NETNS:-}" ]; then
  # shellcheck disable=SC2016 # expanded by the inner shell
  exec env BENCH_NETNS=1 unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
requests=${1:-200000}
shift || true
sizes=("${@:-3}")
rounds=${ROUNDS:-3}

# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release -q
bin=${CARGO_TARGET_DIR:-target}/release/mesh-amb
start_redis --maxclients 10000
names=(direct)
ports=("$BENCH_PORT")
rport=$BENCH_PORT
start_amb "$bin" "127.0.0.1:$rport"
names+=(mesh-amb)
ports+=("$BENCH_PORT")
if [ "${TLS:-1}" != 0 ]; then
  start_amb_tls "$bin" "$rport"
  names+=(mesh-amb-tls)
  ports+=("$BENCH_PORT")
fi
if [ -n "${OLD_BIN:-}" ]; then
  start_amb "$OLD_BIN" "127.0.0.1:$rport"
  names+=(old)
  ports+=("$BENCH_PORT")
fi
if [ "${HAPROXY:-1}" != 0 ] && command -v haproxy >/dev/null; then
  start_haproxy "$rport" 4096
  names+=(haproxy)
  ports+=("$BENCH_PORT")
fi

rps() { # port test size -> requests per second
  timeout 300 redis-benchmark -p "$1" -t "$2" -d "$3" -c 50 -n "$requests" -q \
    | tr '\r' '\n' | awk -v t="${2^^}" '$1 == t":" && /requests per second/ {print $2}'
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

printf '%-5s %6s %-12s %12s %9s %11s\n' test size proxy 'requests/s' 'x direct' 'x haproxy'
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
      printf '%-5s %6s %-12s %12s %9s %11s\n' "$t" "$size" "${names[$i]}" "${med[$i]}" \
        "$(ratio "${med[$i]}" "${med[0]}")" "$(ratio "${med[$i]}" "$h")"
    done
    unset got med
  done
done
