#!/usr/bin/env bash
# The mesh at 8, 32 and 64 hosts in the namespace lab (needs root): join,
# graceful leave and crash removal (p50/p99 over every consumer's table),
# idle traffic on the bridge (every frame, mDNS apart), idle CPU per host,
# and live providers wrongly dropped. The 64-host run takes several minutes.
#   bench/mesh-scale.sh [SIZES]   (default 8,32,64)
# MESH_SETTLE and MESH_WINDOW (seconds) set the idle settle time and the
# traffic window (default 20 and 60); MESH_ARGS adds arguments to every node
# ({ip} is the node's address), e.g. MESH_ARGS='--advertise-addr {ip}'.
# MESH_FLOOD=1000 adds a stranger.s one-off flood of dead instances after the
# crash and prints what it costs (MESH_FLOOD_WINDOW seconds, default 150).
# MESH_FLOOD_DEAF=10 makes the first node's port 5353 deaf for 10 s from the
# flood's start (as a responder that fell behind it).
# MESH_CONSUMERS=16 runs the usual shape instead: 16 nodes only consume, the
# others only provide (node ids put the consumers first in the ring).
# MESH_ROLLING=4 measures the blind start instead: the usual shape, the
# providers started 4 s apart in descending id order, then every fourth of
# those started in the last minute killed (younger than their first
# refresh).
# MESH_SWITCH=10 takes every host's link down for 10 s at once (a switch's
# restart), MESH_SWITCH_WHO=watchers only those of the watchers of the
# providers killed 20 s after; prints how long those take to leave every
# table.
# MESH_LOSS=5 makes every host drop 5 % of the mDNS packets it receives for
# MESH_WINDOW seconds, at random, in the usual shape; prints how often the
# nodes that only provide lost a node of their ring and found it again.
set -euo pipefail
cd "$(dirname "$0")/.."
MESH_HOSTS=${1:-8,32,64} cargo test --release -q --test mesh_scale -- --ignored --exact scale --nocapture 2>&1 \
  | grep -E '^(---|join|graceful|SIGKILL|idle|mDNS|kernel|neighbour|UDP|live|flood|fakes|clearings|browses|CPU|  )|panicked|error'
