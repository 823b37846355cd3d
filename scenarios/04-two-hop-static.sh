#!/usr/bin/env bash
# The two-hop chain of the classic Docker ambassador write-up, with static
# addresses and no discovery at all:
#
#   app on h2 -> localhost:6379 (h2's ambassador, --consume redis:6379=<h1>:6380)
#     -> network -> <h1>:6380 (h1's ambassador, --bind 0.0.0.0,
#                              --consume redis:6380=127.0.0.1:6379)
#     -> Redis on h1, listening on loopback only
#
# and the static forwarder configured from Docker-link variables, on h3:
#   REDIS_PORT_6379_TCP=tcp://<h1>:6380 mesh-amb --from-env
# shellcheck disable=SC2317 # helpers are called through sc_wait
# shellcheck source=scenarios/lib/scenario.sh
source "$(dirname "$0")/lib/scenario.sh"

lab_up 3
h1=$(lab_ip h1)

# Redis on h1 is reachable from h1 itself only.
start_redis h1 redis 6379 --bind 127.0.0.1
t=$(sc_now)
start_amb h1 server-side --bind 0.0.0.0 --consume redis:6380=127.0.0.1:6379
start_amb h2 client-side --consume "redis:6379=$h1:6380"
sc_wait 20 "PONG through the two-hop chain" redis_says h2 6379 PONG ping
chain=$(sc_secs "$t")

lab_exec h2 redis-cli -p 6379 set chain two-hops > /dev/null
redis_says h1 6379 two-hops get chain || sc_fail "key written through the chain is not in h1's Redis"
if redis_says h2 6379 PONG -h "$h1" ping; then
  sc_fail "h1's Redis answers on $h1:6379: the chain proves nothing"
fi
# Static consumes only: no mDNS at all.
lab_log h2 client-side | grep -q "mDNS discovery started" && sc_fail "static ambassador started mDNS"

t=$(sc_now)
lab_bg h3 docker-link env "REDIS_PORT_6379_TCP=tcp://$h1:6380" "$LAB_AMB" --from-env
sc_wait 20 "the key through h3's --from-env forwarder" redis_says h3 6379 two-hops get chain
from_env=$(sc_secs "$t")

# 200 pings on one connection through the chain: both hops' data path.
t=$(sc_now)
pongs=$(lab_exec h2 timeout 20 redis-cli -p 6379 -r 200 ping | grep -c PONG) || true
[ "$pongs" -eq 200 ] || sc_fail "$pongs of 200 pings answered through the chain"
pings=$(sc_secs "$t")

sc_pass "chain up in $chain, --from-env forwarder in $from_env, 200 pings in $pings"
