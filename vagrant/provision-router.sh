#!/usr/bin/env bash
# Provisions the router VM r (run as root by Vagrant, with AMB_ROUTER=yes):
# provision-router.sh IP_A IP_B, its addresses on segments A and B. It
# forwards IPv4 between them and reflects mDNS with avahi-daemon
# (enable-reflector=yes) on those two NICs only: what a home router with
# an mDNS reflector does between a wired and a Wi-Fi segment.
set -euo pipefail
ip_a=$1 ip_b=$2
export DEBIAN_FRONTEND=noninteractive

nic_of() { ip -o -4 addr show | awk -v ip="$1" '{ split($4, a, "/") } a[1] == ip { print $2; exit }'; }
nic_a=$(nic_of "$ip_a") nic_b=$(nic_of "$ip_b")
if [ -z "$nic_a" ] || [ -z "$nic_b" ]; then
  echo "provision-router: no interface holds $ip_a or $ip_b" >&2
  ip -o -4 addr show >&2
  exit 1
fi

if ! dpkg-query -W -f='${Status}' avahi-daemon 2>/dev/null | grep -q "ok installed"; then
  echo "provision-router: installing avahi-daemon (needs a Debian mirror)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends avahi-daemon > /dev/null
fi

echo net.ipv4.ip_forward=1 > /etc/sysctl.d/90-amb-router.conf
sysctl -q -p /etc/sysctl.d/90-amb-router.conf

conf=/etc/avahi/avahi-daemon.conf
sed -i -E "s/^#?allow-interfaces=.*/allow-interfaces=$nic_a,$nic_b/" "$conf"
sed -i -E "s/^#?enable-reflector=.*/enable-reflector=yes/" "$conf"
# Nothing of its own to announce: it only passes the segments' mDNS on.
sed -i -E "s/^#?publish-workstation=.*/publish-workstation=no/" "$conf"
systemctl enable avahi-daemon
systemctl restart avahi-daemon
systemctl disable --now redis-server 2>/dev/null || true
echo "provision-router: forwarding and reflecting mDNS between $nic_a ($ip_a) and $nic_b ($ip_b)"
