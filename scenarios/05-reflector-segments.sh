#!/usr/bin/env bash
# Beyond one segment: mDNS stops at a router, unless the router runs
# avahi-daemon with enable-reflector=yes. Segment A (a1) and segment B (b1)
# are joined by router r, which forwards IPv4 and reflects mDNS. Redis and
# its provider run on a1; the consumer on b1 discovers it through the
# reflector and dials a1's routed address.
# shellcheck source=scenarios/lib/scenario.sh
source "$(dirname "$0")/lib/scenario.sh"

t=$(sc_now)
lab_up_segments 1 1
lab_up=$(sc_secs "$t")

start_redis a1 redis 12345
start_amb a1 provider --interface "$(lab_iface a1)" --node-id a1 --provide redis:12345
t=$(sc_now)
start_amb b1 consumer --interface "$(lab_iface b1)" --node-id b1 --consume redis:6379
sc_wait 30 "a1's Redis through b1's ambassador" redis_says b1 6379 a1 get whoami
found=$(sc_secs "$t")

# b1 dialed a1 across the router: the backend is a1's segment-A address.
lab_log b1 consumer | grep -q "backend joined.*target=$(lab_ip a1):12345" ||
  sc_fail "b1's ambassador did not record a1 at $(lab_ip a1):12345"

sc_pass "segments and reflector up in $lab_up, discovered across the router in $found"
