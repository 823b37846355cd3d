#!/usr/bin/env bash
# The data-plane benchmark: redis-benchmark (-c 50) straight to Redis and
# through mesh-amb, HAProxy, nginx's stream module and socat, on loopback,
# in four suites:
#   plain  -t ping,set,get           pipelined  -P 16 -t ping,set,get
#   16k    -d 16384 -t set,get       k0         -k 0 -t ping (a new
#                                               connection per request)
# Rounds are interleaved (each round runs every target once, in an order
# that rotates from round to round); each figure is the median of ROUNDS.
# Then memory: idle PSS of each proxy, memory per idle proxied connection,
# and 10,000 connections held at once.
#
#   bench/dataplane.sh           full run; rewrites the data-plane section of
#                                BENCHMARKS.md and bench/dataplane.png
#   bench/dataplane.sh --smoke   a few requests, one round, no memory part:
#                                checks that every target answered every
#                                test and prints the table; writes nothing
# Environment:
#   ROUNDS    rounds per figure (default 3; 1 with --smoke)
#   REQUESTS  requests per test of the plain suite (default 50000; the
#             pipelined suite runs 5x as many, 16k a quarter, k0 a fifth)
#   OLD_BIN   another mesh-amb binary to compare side by side (e.g. built
#             from an older commit in a separate worktree), shown as "before"
#   OLD_LABEL what BENCHMARKS.md calls it (e.g. its commit)
#   MEMORY=0  skip the memory part
#   SUITES    the suites to run, e.g. "k0 plain" (default: all four); with
#             a subset, the memory part is skipped and nothing is written
#   BENCH_SMOKE=1  same as --smoke
# Run as root on Debian, it installs what is missing and runs everything in
# a private network namespace with only `lo`. Client, proxies and Redis
# share this machine's cores, so only ratios from the same run mean much.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=${BENCH_SMOKE:-0}
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

# Everything that may use the network happens before the namespace.
if [ -z "${BENCH_NETNS:-}" ]; then
  # shellcheck source=scripts/lib/packages.sh
  . scripts/lib/packages.sh
  needs=(redis-server redis-tools haproxy nginx libnginx-mod-stream socat)
  # The chart is drawn by full runs only.
  [ "$smoke" = 1 ] || needs+=(gnuplot-nox)
  ensure_packages bench/dataplane.sh "${needs[@]}"
  cargo build --release -q
  if [ "${MEMORY:-1}" != 0 ] && [ "$smoke" != 1 ] && [ -z "${SUITES:-}" ]; then
    # The client of the memory part, a test run with --ignored.
    IDLE_MEMORY_BIN=$(cargo test --release --test idle_memory --no-run 2>&1 |
      sed -n 's/.*Executable .*(\(.*\))$/\1/p')
    export IDLE_MEMORY_BIN
  fi
  if [ "$(id -u)" -eq 0 ]; then
    # shellcheck disable=SC2016 # expanded by the inner shell
    exec env BENCH_NETNS=1 BENCH_SMOKE="$smoke" unshare -n -- \
      bash -c 'ip link set lo up && exec "$0" "$@"' "$0"
  fi
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh

target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/release/mesh-amb
if [ "$smoke" = 1 ]; then
  rounds=1 requests=2000
else
  rounds=${ROUNDS:-3} requests=${REQUESTS:-50000}
fi
# 10,000 held connections take two descriptors each in a proxy; without
# CAP_SYS_RESOURCE the hard limit caps that (a container's 20,000 leaves
# room for 9,900).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# HAProxy's and nginx's connection limits: room for the held connections
# and no more, since both size tables by it at start (their idle memory
# grows with it); within the descriptors, as mesh-amb fits its own.
maxconn=$(($(ulimit -n) / 2 - 50))
[ "$maxconn" -le 12000 ] || maxconn=12000
held_conns=$((maxconn - 50))
[ "$held_conns" -le 10000 ] || held_conns=10000

suites=(plain pipelined 16k k0)
partial=0
if [ -n "${SUITES:-}" ]; then
  read -ra suites <<<"$SUITES"
  partial=1
fi
declare -A suite_args=(
  [plain]="-t ping,set,get -n $requests"
  [pipelined]="-P 16 -t ping,set,get -n $((requests * 5))"
  [16k]="-d 16384 -t set,get -n $((requests / 4))"
  [k0]="-k 0 -t ping -n $((requests / 5))"
)
for s in "${suites[@]}"; do
  [ -n "${suite_args[$s]:-}" ] || { echo "unknown suite '$s': use plain, pipelined, 16k or k0" >&2; exit 2; }
done
declare -A suite_title=(
  [plain]="plain (-t ping,set,get)"
  [pipelined]="pipelined (-P 16 -t ping,set,get)"
  [16k]="16 KiB values (-d 16384 -t set,get)"
  [k0]="a new connection per request (-k 0 -t ping)"
)

# The targets, each a name, a port and a PID; idle memory is read as each
# one starts, after its first PING.
names=() ports=() pids=()
declare -A idle_pss=()
add_target() {
  names+=("$1")
  ports+=("$BENCH_PORT")
  pids+=("$BENCH_PID")
  idle_pss[$1]=$(pss_kib "$BENCH_PID")
}
start_redis --maxclients 40000
rport=$BENCH_PORT
add_target direct
start_amb "$bin" "127.0.0.1:$rport"
add_target mesh-amb
if [ -n "${OLD_BIN:-}" ]; then
  start_amb "$OLD_BIN" "127.0.0.1:$rport"
  add_target old
fi
start_haproxy "$rport" "$maxconn"
add_target haproxy
start_nginx "$rport" "$maxconn"
add_target nginx
start_socat "$rport"
add_target socat

results=$BENCH_TMP/results cpu=$BENCH_TMP/cpu
: >"$results"
: >"$cpu"
# Requests per run of each suite: the -n of each of its tests, times the
# tests (-t ping runs two: PING_INLINE and PING_MBULK).
declare -A suite_requests=()
for s in "${suites[@]}"; do
  n_req=${suite_args[$s]##*-n }
  tests=$(sed 's/.*-t \([^ ]*\).*/\1/; s/ping/ping_inline,ping_mbulk/' <<<"${suite_args[$s]}")
  suite_requests[$s]=$((n_req * $(tr ',' '\n' <<<"$tests" | wc -l)))
done
# run SUITE NAME PORT ROUND PID: one redis-benchmark, its CSV rows appended
# to $results as "suite target round test rps p50 p99", and the CPU time
# the target's processes spent per request to $cpu as "suite target round
# microseconds". The timeout bounds a run against a target that stopped
# answering (redis-benchmark would spin).
run() {
  local out before
  before=$(cpu_ticks "$5")
  # shellcheck disable=SC2086 # the suite's arguments are words
  out=$(timeout 300 redis-benchmark -p "$3" -c 50 ${suite_args[$1]} --csv 2>/dev/null) || true
  awk -F'"' -v s="$1" -v t="$2" -v r="$4" \
    'NR > 1 && NF > 1 {print s, t, r, $2, $4, $10, $14}' <<<"$out" >>"$results"
  awk -v s="$1" -v t="$2" -v r="$4" -v d="$(($(cpu_ticks "$5") - before))" \
    -v hz="$(getconf CLK_TCK)" -v n="${suite_requests[$1]}" \
    'BEGIN {printf "%s %s %s %.2f\n", s, t, r, d / hz * 1e6 / n}' >>"$cpu"
}

n=${#names[@]}
echo "targets: ${names[*]}; $rounds round(s), $requests requests (plain suite)" >&2
for ((r = 0; r < rounds; r++)); do
  for si in "${!suites[@]}"; do
    for ((k = 0; k < n; k++)); do
      i=$(((k + r + si) % n))
      run "${suites[$si]}" "${names[$i]}" "${ports[$i]}" "$r" "${pids[$i]}"
    done
  done
  echo "round $((r + 1)) of $rounds done" >&2
done

# Medians over rounds: "suite target test rps p50 p99 rounds".
medians=$BENCH_TMP/medians
sort -k1,1 -k2,2 -k4,4 "$results" | awk '
  function med(a, k,    i, j, t) {
    for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return a[int((k + 1) / 2)]
  }
  function flush() { if (k) print key, med(rps, k), med(p50, k), med(p99, k), k }
  { id = $1 " " $2 " " $4
    if (id != key) { flush(); key = id; k = 0; delete rps; delete p50; delete p99 }
    k++; rps[k] = $5 + 0; p50[k] = $6 + 0; p99[k] = $7 + 0 }
  END { flush() }' >"$medians"

# Every target must have answered every test of every suite.
unanswered=0
for s in "${suites[@]}"; do
  want=$(awk -v s="$s" '$1 == s && $2 == "direct"' "$medians" | wc -l)
  [ "$want" -gt 0 ] || { echo "direct Redis gave no figures for $s" >&2; unanswered=1; }
  for t in "${names[@]}"; do
    got=$(awk -v s="$s" -v t="$t" '$1 == s && $2 == t && $7 == '"$rounds" "$medians" | wc -l)
    if [ "$got" -ne "$want" ]; then
      echo "$t: $got of $want tests of suite $s gave figures in every round" >&2
      unanswered=1
    fi
  done
done

# table SUITE: the suite's markdown table, targets in start order.
table() {
  echo "| test | target | requests/s | x direct | x HAProxy | x nginx | p50 ms | p99 ms | added p50 | added p99 |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
  awk -v s="$1" -v order="${names[*]}" '
    BEGIN { n = split(order, o, " "); split("PING_INLINE PING_MBULK SET GET", known, " ") }
    $1 == s { rps[$3, $2] = $4; p50[$3, $2] = $5; p99[$3, $2] = $6; seen[$3] }
    function x(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    function add(a, b) { return sprintf("%+.3f", a - b) }
    END {
      # The tests in redis-benchmark order, then any other.
      for (i = 1; i in known; i++) if (known[i] in seen) { tests[++m] = known[i]; delete seen[known[i]] }
      for (t in seen) tests[++m] = t
      for (i = 1; i <= m; i++) {
        t = tests[i]
        for (j = 1; j <= n; j++) {
          g = o[j]
          if (!((t, g) in rps)) continue
          printf "| %s | %s | %.0f | %s | %s | %s | %.3f | %.3f | %s | %s |\n", t, g, rps[t, g],
            x(rps[t, g], rps[t, "direct"]), x(rps[t, g], rps[t, "haproxy"]), x(rps[t, g], rps[t, "nginx"]),
            p50[t, g], p99[t, g],
            g == "direct" ? "" : add(p50[t, g], p50[t, "direct"]), g == "direct" ? "" : add(p99[t, g], p99[t, "direct"])
        }
      }
    }' "$medians"
}

# Per suite and target, the geometric mean over the suite's tests of the
# ratio to direct: "suite target ratio".
ratios=$BENCH_TMP/ratios
awk '
  { rps[$1, $3, $2] = $4; t[$1, $3]; g[$2] }
  END {
    for (st in t) { split(st, p, SUBSEP); if (!((st, "direct") in rps)) continue
      for (x in g) if ((st, x) in rps) { l[p[1], x] += log(rps[st, x] / rps[st, "direct"]); c[p[1], x]++ } }
    for (k in c) { split(k, p, SUBSEP); printf "%s %s %.2f\n", p[1], p[2], exp(l[k] / c[k]) }
  }' "$medians" >"$ratios"
ratio_of() { awk -v s="$1" -v t="$2" '$1 == s && $2 == t {print $3}' "$ratios"; }
over() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }

summary() {
  local head="| suite | mesh-amb | HAProxy | nginx | socat |" rule="|---|--:|--:|--:|--:|"
  [ -z "${OLD_BIN:-}" ] || { head+=" before |"; rule+="--:|"; }
  head+=" mesh-amb x HAProxy | mesh-amb x nginx |"
  rule+="--:|--:|"
  [ -z "${OLD_BIN:-}" ] || { head+=" mesh-amb x before |"; rule+="--:|"; }
  echo "$head"
  echo "$rule"
  local s m line
  for s in "${suites[@]}"; do
    m=$(ratio_of "$s" mesh-amb)
    line="| $s | $m | $(ratio_of "$s" haproxy) | $(ratio_of "$s" nginx) | $(ratio_of "$s" socat) |"
    [ -z "${OLD_BIN:-}" ] || line+=" $(ratio_of "$s" old) |"
    line+=" $(over "$m" "$(ratio_of "$s" haproxy)") | $(over "$m" "$(ratio_of "$s" nginx)") |"
    [ -z "${OLD_BIN:-}" ] || line+=" $(over "$m" "$(ratio_of "$s" old)") |"
    echo "$line"
  done
}

# CPU time of each target's processes per request, median over rounds,
# per suite: "suite target microseconds". Steadier than requests/s on a
# shared machine: it counts the work, not the waiting.
cpu_medians=$BENCH_TMP/cpu_medians
sort -k1,1 -k2,2 -k4,4g "$cpu" | awk '
  { id = $1 " " $2; if (id != key) { if (k) print key, v[int((k + 1) / 2)]; key = id; k = 0 } v[++k] = $4 }
  END { if (k) print key, v[int((k + 1) / 2)] }' >"$cpu_medians"
cpu_table() {
  local line t s
  line="| suite |"
  for t in "${names[@]}"; do line+=" $t |"; done
  echo "$line"
  echo "|---|$(printf -- '--:|%.0s' "${names[@]}")"
  for s in "${suites[@]}"; do
    line="| $s |"
    for t in "${names[@]}"; do
      line+=" $(awk -v s="$s" -v t="$t" '$1 == s && $2 == t {printf "%.1f", $3}' "$cpu_medians") |"
    done
    echo "$line"
  done
}

report=$BENCH_TMP/report.md
{
  echo "Ratio to direct Redis per suite (geometric mean over the suite's tests):"
  echo
  summary
  echo
  echo "CPU time per request, in microseconds, of each target's processes (user and"
  echo "system, from /proc; direct: redis-server's own), median over rounds:"
  echo
  cpu_table
  for s in "${suites[@]}"; do
    echo
    echo "#### ${suite_title[$s]}"
    echo
    table "$s"
  done
} >"$report"
cat "$report"
if [ "$unanswered" -ne 0 ]; then
  echo "some targets did not answer: see above" >&2
  exit 1
fi
[ "$smoke" = 1 ] || [ "$partial" = 1 ] && exit 0

# The chart: grouped bars, ratio to direct per suite and proxy.
chart=bench/dataplane.png
plotted=(mesh-amb haproxy nginx socat)
[ -z "${OLD_BIN:-}" ] || plotted=(mesh-amb old haproxy nginx socat)
{
  echo "suite ${plotted[*]}"
  for s in "${suites[@]}"; do
    line=$s
    for t in "${plotted[@]}"; do line+=" $(ratio_of "$s" "$t")"; done
    echo "$line"
  done
} | sed 's/\bold\b/before/' >"$BENCH_TMP/chart.dat"
gnuplot <<PLOT
set terminal pngcairo size 900,480 font "sans,11"
set output "$chart"
set title "redis-benchmark -c 50 through each proxy, ratio to direct Redis (higher is better)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set yrange [0:1.1]
set ytics 0.1
set grid ytics
set key top right horizontal
set xtics nomirror
plot for [c=2:$((${#plotted[@]} + 1))] "$BENCH_TMP/chart.dat" using c:xtic(1) title columnhead
PLOT

# Memory: per idle connection (2,000 connections that each moved a 60 KiB
# value both ways) and 10,000 connections held at once.
memory=$BENCH_TMP/memory.md
if [ "${MEMORY:-1}" != 0 ]; then
  # held CONNS VALUE: fresh proxies, the idle_memory client through each.
  held() {
    local targets=() t
    start_amb "$bin" "127.0.0.1:$rport"
    targets+=("mesh-amb=127.0.0.1:$BENCH_PORT/$BENCH_PID")
    start_haproxy "$rport" "$maxconn"
    targets+=("haproxy=127.0.0.1:$BENCH_PORT/$BENCH_PID")
    start_nginx "$rport" "$maxconn"
    targets+=("nginx=127.0.0.1:$BENCH_PORT/$BENCH_PID")
    IDLE_MEMORY_TARGETS="${targets[*]}" IDLE_MEMORY_CONNS="$1" IDLE_MEMORY_VALUE="$2" \
      "$IDLE_MEMORY_BIN" --ignored --nocapture --test-threads 1 2>&1 | awk '$3 == "KiB" && $5 == "KiB"'
    for t in "${targets[@]}"; do
      kill "${t##*/}"
      wait "${t##*/}" 2>/dev/null || true
    done
  }
  echo "memory: 2,000 connections, 60 KiB each way, then idle" >&2
  per_conn=$(held 2000 61440)
  echo "memory: $held_conns connections held at once" >&2
  ten_k=$(held "$held_conns" 16)
  {
    echo "| proxy | idle PSS | per idle connection: RSS growth / 2,000 | $held_conns held: RSS growth | $held_conns held: errors |"
    echo "|---|--:|--:|--:|--:|"
    for t in mesh-amb haproxy nginx; do
      a=$(awk -v t="$t" '$1 == t {printf "%.1f KiB", $6}' <<<"$per_conn")
      b=$(awk -v t="$t" '$1 == t {printf "%.1f MiB", ($4 - $2) / 1024}' <<<"$ten_k")
      e=$([ -n "$b" ] && echo 0 || echo "failed")
      echo "| $t | $(awk -v k="${idle_pss[$t]}" 'BEGIN {printf "%.1f MiB", k / 1024}') | ${a:--} | ${b:--} | $e |"
    done
  } >"$memory"
  cat "$memory"
fi

# BENCHMARKS.md: only the data-plane section is rewritten.
rev=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || rev+=" with uncommitted changes"
section=$BENCH_TMP/section.md
{
  echo "## Data plane"
  echo
  echo "Written by \`bench/dataplane.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), with"
  echo "\`ROUNDS=$rounds REQUESTS=$requests${OLD_BIN:+ OLD_BIN=...} bench/dataplane.sh\`"
  echo "(bench/dataplane-notes.md, at the end, says what the figures mean):"
  echo "redis-benchmark -c 50 on loopback, straight to Redis and through each proxy,"
  echo "interleaved, median of $rounds rounds. Client, proxies and Redis share the"
  echo "machine's cores, so only ratios within one run compare."
  echo
  echo "- Machine: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores, Linux $(uname -r)"
  echo "- Redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), nginx $(nginx -v 2>&1 | grep -o '[0-9.]*$'), socat $(socat -V | awk '/socat version/ {print $3}')"
  echo "- mesh-amb $rev${OLD_BIN:+; \"before\": ${OLD_LABEL:-$OLD_BIN}}"
  echo "- HAProxy: tcp mode, nbthread $(nproc), maxconn $maxconn. nginx: stream module,"
  echo "  worker_processes $(nproc), no access log. socat: fork, backlog 1024, TCP_NODELAY both"
  echo "  ways. mesh-amb: \`--consume redis:PORT=127.0.0.1:REDIS\` (static backend)."
  echo
  echo "![ratio to direct per suite](bench/dataplane.png)"
  echo
  cat "$report"
  if [ -s "$memory" ]; then
    echo
    echo "### Memory"
    echo
    echo "Idle PSS right after start and one PING (nginx: master and workers)."
    echo "Per idle connection: growth of the proxy's memory after 2,000 clients each"
    echo "moved a 60 KiB value both ways (SET, GET) and went idle, divided by 2,000."
    echo "$held_conns held: $held_conns clients connected at once, each did a SET and GET of"
    echo "16 bytes and stayed connected; errors counts clients that failed (the"
    echo "client stops at the first). Descriptor limit: $(ulimit -n) per process."
    echo
    cat "$memory"
  fi
  echo
  cat bench/dataplane-notes.md
} >"$section"
if [ ! -f BENCHMARKS.md ]; then
  printf '# Benchmarks\n\n<!-- dataplane:begin -->\n<!-- dataplane:end -->\n\n<!-- mesh:begin -->\n<!-- mesh:end -->\n' >BENCHMARKS.md
fi
awk -v f="$section" '
  /<!-- dataplane:begin -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
  /<!-- dataplane:end -->/ { skip = 0 }
  !skip' BENCHMARKS.md >"$BENCH_TMP/BENCHMARKS.md"
cp "$BENCH_TMP/BENCHMARKS.md" BENCHMARKS.md
echo "wrote BENCHMARKS.md (data-plane section) and $chart" >&2
