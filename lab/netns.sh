# shellcheck shell=bash
# The namespace lab's topology, written once: scenarios/lib/lab.sh sources
# these functions and lab/src/lib.rs runs them (include_str!), so the Rust
# tests and the scenario scripts build exactly the same segments. Both
# create the namespaces themselves (each names them its own way) and call:
#
#   netns_bridge NS                       bridge br0 in namespace NS
#   netns_plug BR PORT NS IF ADDR [GW]    a veth from BR's br0 (port PORT)
#                                         to interface IF of namespace NS
#
# Only the lab's own namespaces are touched, never the root namespace.

# Multicast snooping off, so every multicast frame floods to every port as
# on a dumb switch; no STP, so ports forward at once.
netns_bridge() {
  ip -n "$1" link add br0 type bridge stp_state 0 mcast_snooping 0 &&
    ip -n "$1" link set br0 up
}

# The host's first lab interface also carries its multicast route
# (224.0.0.0/4), so mDNS goes out on the lab link, never elsewhere.
netns_plug() {
  local br=$1 port=$2 ns=$3 ifname=$4 addr=$5 gw=${6:-}
  ip -n "$br" link add "$port" type veth peer name "$ifname" netns "$ns" &&
    ip -n "$br" link set "$port" master br0 up &&
    ip -n "$ns" link set "$ifname" multicast on up &&
    ip -n "$ns" addr add "$addr/24" dev "$ifname" || return 1
  if ! ip -n "$ns" route show 224.0.0.0/4 | grep -q .; then
    ip -n "$ns" route add 224.0.0.0/4 dev "$ifname" || return 1
  fi
  if [ -n "$gw" ]; then ip -n "$ns" route add default via "$gw" || return 1; fi
}
