#!/usr/bin/env bash
# Failover and load balancing: three hosts provide "api" (a Redis whose
# `GET whoami` names its host); h1's app sends 300 requests, each on a new
# connection, through localhost:8080. After 100 of them h3 crashes (its
# Redis and its ambassador SIGKILLed: no goodbye, so its mDNS record stays
# in every cache for two minutes). No request may fail; the spread over the
# hosts is reported.
#
# The crash happens between two requests (the client waits for it after
# request 100): a request in flight on h3 at the instant of the crash is
# reset with it, and no proxy can replay a half-done request. What is
# tested is that no new request fails although h3 is still in the
# consumer's table: connection refused -> ejection -> next backend.
# shellcheck disable=SC2317 # helpers are called through sc_wait
# shellcheck source=scenarios/lib/scenario.sh
source "$(dirname "$0")/lib/scenario.sh"

REQUESTS=300
KILL_AT=100

lab_up 3
for h in h1 h2 h3; do
  start_redis "$h" api 7000
  start_amb "$h" provider --interface "$(lab_iface "$h")" --node-id "$h" --provide api:7000
done
t=$(sc_now)
start_amb h1 consumer --interface "$(lab_iface h1)" --node-id h1-app --consume api:8080

# Discovery is complete once every host has answered through the consumer.
seen=" "
answered_by_all() {
  local who
  who=$(lab_exec h1 timeout 5 redis-cli -p 8080 get whoami 2> /dev/null) || return 1
  [[ "$seen" == *" $who "* ]] || seen="$seen$who "
  [[ "$seen" == *" h1 "* && "$seen" == *" h2 "* && "$seen" == *" h3 "* ]]
}
sc_wait 30 "answers from h1, h2 and h3 through the consumer" answered_by_all
discovered=$(sc_secs "$t")

# The client: one line per request, "<n> <duration µs> <reply>"; after
# request KILL_AT it waits (30 s at most) for the file $go, made once h3 is
# down.
go=/tmp/$LAB_RUN-go
# shellcheck disable=SC2016 # expanded on h1
lab_bg h1 client bash -c "$(sc_whoami_fn 8080 5)"'
  for ((n = 1; n <= '"$REQUESTS"'; n++)); do
    t=${EPOCHREALTIME/./}
    get_whoami
    echo "$n $((${EPOCHREALTIME/./} - t)) ${r:-ERR}"
    if [ "$n" = '"$KILL_AT"' ]; then
      for ((w = 0; w < 3000; w++)); do [ -e '"$go"' ] && break; sleep 0.01; done
      echo "resumed"
    fi
  done; echo done'
log() { lab_log h1 client; }
reached() { [ "$(log | grep -c '^[0-9]')" -ge "$1" ]; }
finished() { log | grep -qx "done"; }

sc_wait 30 "$KILL_AT requests" reached "$KILL_AT"
lab_kill h3 api KILL
lab_kill h3 provider KILL
lab_exec h1 touch "$go"
sc_wait 60 "the client's $REQUESTS requests" finished
lab_exec h1 rm -f "$go"
killed_at=$KILL_AT
failed=$(log | awk '/^[0-9]/ && $3 !~ /^h[123]$/' | wc -l)
late=$(log | awk -v k="$killed_at" '/^[0-9]/ && $1 > k && $3 == "h3"' | wc -l)
spread() { log | awk -v lo="$1" -v hi="$2" '/^[0-9]/ && $1 > lo && $1 <= hi { c[$3]++ }
  END { printf "h1=%d h2=%d h3=%d", c["h1"], c["h2"], c["h3"] }'; }
before=$(spread 0 "$killed_at")
after=$(spread "$killed_at" "$REQUESTS")
worst=$(log | awk -v k="$killed_at" '/^[0-9]/ && $1 > k && $2 > m { m = $2 } END { printf "%d", m / 1000 }')
median=$(log | awk '/^[0-9]/ { print $2 }' | sort -n | awk '{ a[NR] = $1 } END { printf "%d", a[int((NR + 1) / 2)] / 1000 }')

[ "$failed" -eq 0 ] || sc_fail "$failed of $REQUESTS requests failed (spread before kill: $before, after: $after)"
[ "$late" -eq 0 ] || sc_fail "$late replies from h3 after it was killed"
for h in h1 h2 h3; do
  [[ "$before" != *"$h=0"* ]] || sc_fail "$h got no request before the kill ($before)"
done
for h in h1 h2; do
  [[ "$after" != *"$h=0 "* && "$after" != *"$h=0" ]] || sc_fail "$h got no request after the kill ($after)"
done

sc_pass "discovered all 3 in $discovered; $REQUESTS requests, 0 failed; spread before kill: $before, after: $after; median ${median} ms, worst after kill ${worst} ms"
