# shellcheck shell=bash
# What every scenario sources: strict mode, the lab driver, the PASS/FAIL
# line, cleanup on every exit, and helpers for Redis and mesh-amb.
#
# A scenario is one file scenarios/NN-name.sh:
#
#   #!/usr/bin/env bash
#   # What it shows, in a sentence or two.
#   source "$(dirname "$0")/lib/scenario.sh"
#   lab_up 2
#   ...
#   sc_pass "discovery $(sc_secs "$t")"
#
# It prints exactly one line `PASS NN-name (timings)` or
# `FAIL NN-name: reason` on stdout (details, log tails, go to stderr),
# and exits 0, 1 (fail) or 77 (skip: the lab cannot play it).

set -Eeuo pipefail

# shellcheck source=scenarios/lib/lab.sh
source "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

SCENARIO=$(basename "$0" .sh)
SC_T0=${EPOCHREALTIME/./}
SC_RESULT=          # set once the PASS/FAIL/SKIP line is printed
SC_ERR=             # the command that failed, for the FAIL line

# Microseconds since the epoch / milliseconds since T (a sc_now value).
sc_now() { echo "${EPOCHREALTIME/./}"; }
sc_ms() { echo $((($(sc_now) - $1) / 1000)); }
# Seconds since T with two decimals: "1.23s".
sc_secs() {
  local ms
  ms=$(sc_ms "$1")
  printf '%d.%02ds' $((ms / 1000)) $((ms % 1000 / 10))
}

sc_pass() {
  SC_RESULT=PASS
  echo "PASS $SCENARIO ($*, total $(sc_secs "$SC_T0"))"
  exit 0
}

sc_skip() {
  SC_RESULT=SKIP
  echo "SKIP $SCENARIO: $*"
  exit 77
}

# Prints the FAIL line, then (stderr) every background process's log tail;
# the logs are kept (LAB_KEEP=1) for a look at the whole of them.
sc_fail() {
  SC_RESULT=FAIL
  echo "FAIL $SCENARIO: $*"
  if [ -n "$LAB_DIR" ]; then
    lab_tails 25 >&2 || true
    LAB_KEEP=1
  fi
  exit 1
}

# Names the scenario's own line that failed (and the innermost command),
# for the FAIL line of an unexpected error.
sc__on_err() {
  local rc=$1 cmd=$2 i line=
  for ((i = ${#BASH_SOURCE[@]} - 1; i >= 1; i--)); do
    if [ "${BASH_SOURCE[$i]}" = "$0" ]; then
      line=${BASH_LINENO[$((i - 1))]}
      break
    fi
  done
  SC_ERR="exit $rc at ${0##*/}:$line: $(sed -n "${line}{s/^ *//;p}" "$0") [$cmd]"
}

sc__on_exit() {
  local rc=$?
  trap - ERR
  set +e
  if [ -z "$SC_RESULT" ]; then
    # An unexpected error (set -e) or a signal: still one FAIL line.
    echo "FAIL $SCENARIO: ${SC_ERR:-exited with status $rc}"
    if [ -n "$LAB_DIR" ]; then
      lab_tails 25 >&2
      LAB_KEEP=1
    fi
    rc=1
  fi
  lab_down
  exit "$rc"
}

trap 'sc__on_err "$?" "$BASH_COMMAND"' ERR
trap sc__on_exit EXIT
for sc__sig in INT TERM HUP; do
  # shellcheck disable=SC2064 # the signal name is meant to expand now
  trap "SC_ERR='interrupted by SIG$sc__sig'; exit 130" "$sc__sig"
done

# sc_wait SECS WHAT CMD...: polls CMD until it succeeds, or fails the
# scenario with "WHAT not within SECS s". SECS is what the netns lab needs
# with room to spare, scaled by LAB_TIME_SCALE (lab.sh) for slower labs.
sc_wait() {
  local secs=$(($1 * ${LAB_TIME_SCALE:-1})) what=$2
  shift 2
  lab_wait "$secs" "$@" || sc_fail "$what not within ${secs}s"
}

# start_redis HOST NAME PORT [redis-server args...]: a throwaway Redis
# (no persistence) whose key `whoami` holds HOST, once it answers. PORT must
# lie outside HOST's ephemeral range: there any outgoing connection, or its
# TIME_WAIT, may hold it, and Redis then fails to bind at random.
start_redis() {
  local host=$1 name=$2 port=$3 low high
  shift 3
  read -r low high < <(lab_exec "$host" cat /proc/sys/net/ipv4/ip_local_port_range)
  if [ "$port" -ge "$low" ] && [ "$port" -le "$high" ]; then
    sc_fail "redis port $port is in $host's ephemeral range $low-$high"
  fi
  lab_bg "$host" "$name" redis-server --port "$port" --protected-mode no \
    --save '' --appendonly no "$@"
  sc_wait 10 "redis on $host:$port" redis_says "$host" "$port" PONG ping
  lab_exec "$host" redis-cli -p "$port" set whoami "$host" > /dev/null
}

# redis_says HOST PORT EXPECTED CMD...: whether `redis-cli -p PORT CMD...`
# on HOST prints EXPECTED (a new connection each time, bounded to 5 s).
redis_says() {
  local host=$1 port=$2 want=$3 out
  shift 3
  out=$(lab_exec "$host" timeout 5 redis-cli -p "$port" "$@" 2> /dev/null) || return 1
  [ "$out" = "$want" ]
}

# sc_whoami_fn PORT SECS: the definition of a shell function `get_whoami`
# for a client loop run on a lab host (bash -c): it asks localhost:PORT
# `GET whoami` on a new connection, waiting SECS at most for the reply's
# first line, and leaves the value in $r (empty if no bulk string came:
# an error, a nil, a reset, a timeout). It speaks RESP through bash's own
# /dev/tcp instead of starting a redis-cli: under QEMU's emulation a
# process started per request cost about 300 ms, most of a client's time.
# SIGPIPE is ignored: a write to a reset connection fails that request,
# not the whole loop (printf is a builtin). The connect has no timeout of
# its own: to a local listener it is refused or accepted at once.
sc_whoami_fn() {
  local port=$1 secs=$2
  # shellcheck disable=SC2016 # expanded on the host
  printf '%s\n' \
    "trap '' PIPE" \
    'get_whoami_() {' \
    '  printf "GET whoami\r\n" >&3 && read -r -t '"$secs"' h <&3 && [[ $h == \$[0-9]* ]] &&' \
    '    read -r -t '"$secs"' r <&3' \
    '} 3<>/dev/tcp/127.0.0.1/'"$port" \
    'get_whoami() { r=; get_whoami_ 2>/dev/null || r=; r=${r//[[:cntrl:]]/}; }'
}

# start_amb HOST NAME ARGS...: mesh-amb with ARGS in the background on HOST.
start_amb() {
  local host=$1 name=$2
  shift 2
  lab_bg "$host" "$name" env RUST_LOG="${RUST_LOG:-info}" "$LAB_AMB" "$@"
}
