#!/usr/bin/env bash
# Simple discovery: Redis runs on h1 on a non-default port and h1's
# ambassador offers it to the mesh as "redis"; the app on h2 reaches it
# through its own ambassador on localhost:6379, with no address configured
# anywhere.
# shellcheck source=scenarios/lib/scenario.sh
source "$(dirname "$0")/lib/scenario.sh"

lab_up 2

start_redis h1 redis 12345
start_amb h1 provider --interface "$(lab_iface h1)" --node-id h1 --provide redis:12345
t=$(sc_now)
start_amb h2 consumer --interface "$(lab_iface h2)" --node-id h2 --consume redis:6379
sc_wait 30 "PONG through h2's ambassador" redis_says h2 6379 PONG ping
found=$(sc_secs "$t")

# The same Redis, not just any: a key written through h2 is in h1's Redis.
lab_exec h2 redis-cli -p 6379 set via-h2 hello > /dev/null
redis_says h1 12345 hello get via-h2 || sc_fail "key written through h2 is not in h1's Redis"
redis_says h2 6379 h1 get whoami || sc_fail "h2's localhost:6379 is not h1's Redis"

sc_pass "discovered in $found"
