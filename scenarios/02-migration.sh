#!/usr/bin/env bash
# Migration: Redis and its provider move from h1 to h3 (another port), while
# a client on h2 keeps asking localhost:6379 "who are you?" with a new
# connection every ~50 ms, never reconfigured or restarted.
#   1. cold move: h1 stops, then h3 starts; the client's gap is measured.
#      The consumer holds a client that comes in the gap for up to its
#      --wait-for-backend (WAIT_S); the client waits for a reply longer
#      than that (as redis-cli, which has no timeout), so a request fails
#      only when the ambassador lets it go: none that came after the old
#      Redis had gone may fail before the hold is over.
#   2. planned move back to h1 (new port), make-before-break: the new one
#      starts, the old provider drains (state=draining, then goodbye) before
#      its Redis stops; the client must see no failure at all.
# shellcheck disable=SC2317 # helpers are called through sc_wait
# shellcheck source=scenarios/lib/scenario.sh
source "$(dirname "$0")/lib/scenario.sh"

lab_up 3

provide() { # HOST PORT
  start_amb "$1" "provider-$2" --interface "$(lab_iface "$1")" --node-id "$1" --provide "redis:$2"
}
start_redis h1 redis-12345 12345
provide h1 12345
WAIT_S=3
start_amb h2 consumer --interface "$(lab_iface h2)" --node-id h2 --consume redis:6379 \
  --wait-for-backend "${WAIT_S}s"
sc_wait 30 "PONG through h2's ambassador" redis_says h2 6379 h1 get whoami

# The client: one line per request, "<start µs> <duration µs> <reply>",
# waiting for each reply 2 s longer than the ambassador holds it.
# shellcheck disable=SC2016 # expanded on h2
lab_bg h2 client bash -c "$(sc_whoami_fn 6379 $((WAIT_S + 2)))"'
  while :; do
    t=${EPOCHREALTIME/./}
    get_whoami
    echo "$t $((${EPOCHREALTIME/./} - t)) ${r:-ERR}"
    sleep 0.05
  done'

# Replies equal to WHO among the client's lines after line FROM.
replies() { lab_log h2 client | awk -v from="$1" -v who="$2" 'NR > from && $3 == who' | wc -l; }
at_least() { [ "$(replies "$1" "$2")" -ge "$3" ]; }
lines() { lab_log h2 client | wc -l; }
# "<gap ms> <failed requests> <of them let go before the hold ended>"
# between the last WHO1 reply and the first WHO2 reply after line FROM, as
# the client saw them come (a request held through the gap ends with its
# reply). A request let go early started at GONE or later, a time on the
# client's clock after WHO1's Redis exited (one started before may have
# been in that Redis when it stopped, and is lost whoever forwarded it),
# and failed within the hold, less 0.1 s for the clocks: the ambassador
# dropped it where it should have held it.
gap() {
  lab_log h2 client | awk -v from="$1" -v a="$2" -v b="$3" -v gone="$4" -v hold="$((WAIT_S * 1000000 - 100000))" '
    NR <= from { next }
    $3 == a && !seen_b { last_a = $1 + $2; failed = 0; early = 0; next }
    $3 == b && !seen_b { seen_b = 1; first_b = $1 + $2; next }
    !seen_b && $3 != a { failed++; if ($1 >= gone && $2 < hold) early++ }
    END {
      if (!seen_b || !last_a) print "-1 -1 -1"
      else printf "%d %d %d\n", (first_b - last_a) / 1000, failed, early
    }'
}
failures_since() { lab_log h2 client | awk -v from="$1" 'NR > from && $3 !~ /^h[0-9]+$/' | wc -l; }

sc_wait 20 "10 replies from h1" at_least 0 h1 10

# 1. Cold move h1 -> h3.
mark1=$(lines)
lab_kill h1 provider-12345 TERM
lab_kill h1 redis-12345 TERM
t=$(sc_now)
# shellcheck disable=SC2016 # expanded on h2
gone=$(lab_exec h2 bash -c 'echo "${EPOCHREALTIME/./}"')
[[ $gone =~ ^[0-9]+$ ]] || sc_fail "no time from h2's clock: '$gone'"
start_redis h3 redis-23456 23456
provide h3 23456
sc_wait 30 "10 replies from h3 after the move" at_least "$mark1" h3 10
read -r gap1 failed1 early1 < <(gap "$mark1" h1 h3 "$gone")
[ "$gap1" -ge 0 ] || sc_fail "could not measure the gap"
[ "$gap1" -lt $((15000 * LAB_TIME_SCALE)) ] || sc_fail "cold move gap ${gap1} ms"
[ "$early1" -eq 0 ] ||
  sc_fail "$early1 requests that came after h1's Redis had gone failed within the ${WAIT_S} s hold (cold-move gap ${gap1} ms)"
moved1=$(sc_secs "$t")

# 2. Planned move h3 -> h1:14567: start the new one, wait until h2's
#    ambassador has it, then let the old provider drain and leave.
mark2=$(lines)
start_redis h1 redis-14567 14567
provide h1 14567
sc_wait 30 "h2's ambassador to see the new h1 backend" at_least "$mark2" h1 1
lab_kill h3 provider-23456 TERM
lab_kill h3 redis-23456 TERM
mark3=$(lines)
sc_wait 20 "10 replies from h1 after the move back" at_least "$mark3" h1 10
late_h3=$(lab_log h2 client | awk -v from="$mark3" 'NR > from + 2 && $3 == "h3"' | wc -l)
[ "$late_h3" -eq 0 ] || sc_fail "$late_h3 replies from h3 after it left"
failed2=$(failures_since "$mark2")
[ "$failed2" -eq 0 ] || sc_fail "$failed2 failed requests during the planned move"
lab_kill h2 client KILL
total=$(lines)

sc_pass "cold move h1->h3: gap ${gap1} ms, ${failed1} failed requests, h3 serving after ${moved1}; planned move h3->h1: 0 failed; ${total} requests"
