#!/usr/bin/env bash
# Provisions one lab VM (run as root by Vagrant): provision.sh IP ROLE INSTALL
#   IP       this VM's private-network address (192.168.56.11, ...)
#   ROLE     provider (offers the local Redis as "redis") or consumer
#            (localhost:6379 stands in for "redis")
#   INSTALL  build: compile mesh-amb from /vagrant with Debian's Rust
#            (needs a Debian mirror and crates.io from the VM)
#            prebuilt: install /vagrant/vagrant/bin/mesh-amb as it is
#            (needs nothing from outside when the box has the packages)
# Safe to run again (`vagrant provision`): it rebuilds and restarts.
set -euo pipefail
ip=$1 role=$2 install=$3
export DEBIAN_FRONTEND=noninteractive

# Debian 12's own `cargo`/`rustc` are 1.63, too old for mesh-amb (Cargo.toml
# rust-version 1.85); `cargo-web`/`rustc-web` are Debian 12's newer Rust
# (1.85 in bookworm, newer in bookworm-security), packaged for the browsers
# and installable as /usr/bin/cargo. No rustup, no download from outside
# Debian and crates.io.
packages=(redis-server redis-tools avahi-daemon avahi-utils ca-certificates)
[ "$install" = prebuilt ] || packages+=(cargo-web rustc-web gcc libc6-dev)
# Only what the box lacks: a box made by build-box.sh has every package of
# a prebuilt lab, so an isolated lab (no route to a mirror) provisions too.
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "provision: installing ${missing[*]} (needs a Debian mirror)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

# The NIC that holds the private-network address: eth1 on VirtualBox, the
# second NIC under whatever name on libvirt. The first NIC is the NAT /
# management adapter (10.0.2.15 on every VirtualBox VM): advertising it would
# send every consumer to itself.
nic=$(ip -o -4 addr show | awk -v ip="$ip" '{ split($4, a, "/") } a[1] == ip { print $2; exit }')
if [ -z "$nic" ]; then
  echo "provision: no interface holds $ip" >&2
  ip -o -4 addr show >&2
  exit 1
fi
echo "provision: private network $ip on $nic, role $role"

# mesh-amb itself.
case "$install" in
  build)
    export CARGO_HOME=/var/cache/mesh-amb/cargo CARGO_TARGET_DIR=/var/cache/mesh-amb/target
    echo "provision: building mesh-amb with $(cargo --version) (a few minutes the first time)"
    cargo build --release --locked --quiet --manifest-path /vagrant/Cargo.toml
    install -m 0755 "$CARGO_TARGET_DIR/release/mesh-amb" /usr/local/bin/mesh-amb
    ;;
  prebuilt)
    if [ ! -x /vagrant/vagrant/bin/mesh-amb ]; then
      echo "provision: AMB_INSTALL=prebuilt needs vagrant/bin/mesh-amb (see vagrant/README.md)" >&2
      exit 1
    fi
    install -m 0755 /vagrant/vagrant/bin/mesh-amb /usr/local/bin/mesh-amb
    ;;
esac
/usr/local/bin/mesh-amb --version

# avahi-daemon, for avahi-browse and static /etc/avahi/services files: on
# the private network only. It shares UDP 5353 with mesh-amb.
sed -i -E "s/^#?allow-interfaces=.*/allow-interfaces=$nic/" /etc/avahi/avahi-daemon.conf
systemctl restart avahi-daemon

# Redis: the provider VM's Redis must be reachable from the other VMs (they
# connect to it directly, as advertised); on the others it is only a client.
if [ "$role" = provider ]; then
  sed -i -E 's/^bind .*/bind 0.0.0.0 -::*/; s/^protected-mode .*/protected-mode no/' /etc/redis/redis.conf
  systemctl enable redis-server
  systemctl restart redis-server
else
  systemctl disable --now redis-server
fi

# One systemd template, one instance per role; the role's settings are
# MESH_AMB_* variables in /etc/mesh-amb/<role>.env.
install -d /etc/mesh-amb
cat > /etc/systemd/system/mesh-amb@.service <<'EOF'
[Unit]
Description=mesh-amb ambassador (%i)
Documentation=file:///vagrant/README.md
Wants=network-online.target
After=network-online.target redis-server.service

[Service]
Type=exec
EnvironmentFile=/etc/mesh-amb/%i.env
ExecStart=/usr/local/bin/mesh-amb
Restart=on-failure
RestartSec=1
# SIGTERM: a provider announces state=draining for --drain-period, says
# goodbye and exits; open connections get --drain-timeout (30 s).
TimeoutStopSec=45
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
EOF

node=$(hostname -s)-$role
case "$role" in
  provider) spec="MESH_AMB_PROVIDE=redis:6379" ;;
  consumer) spec="MESH_AMB_CONSUME=redis:6379" ;;
  *) echo "provision: unknown role $role" >&2; exit 1 ;;
esac
cat > "/etc/mesh-amb/$role.env" <<EOF
# mesh-amb@$role on $(hostname -s); every flag has a MESH_AMB_* variable.
MESH_AMB_INTERFACE=$nic
MESH_AMB_NODE_ID=$node
$spec
EOF
systemctl daemon-reload
systemctl enable "mesh-amb@$role"
systemctl restart "mesh-amb@$role"
echo "provision: mesh-amb@$role running as node $node on $nic"
