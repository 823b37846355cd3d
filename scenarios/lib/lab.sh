# shellcheck shell=bash
# The lab driver: the few verbs a scenario uses to run things on "hosts",
# implemented twice so that the same scenario runs on this machine
# (LAB=netns, Linux network namespaces, the default) and in the Vagrant VMs
# of vagrant/Vagrantfile (LAB=vagrant).
#
#   lab_up N                  hosts h1..hN on one segment
#   lab_up_segments A B       hosts a1..aA and b1..bB on two segments joined by
#                             router r (avahi-daemon reflecting mDNS unless
#                             LAB_REFLECTOR=no)
#   lab_exec HOST CMD...      run CMD on HOST as root, return its status
#   lab_bg HOST NAME CMD...   start a long-running CMD on HOST, output logged
#   lab_kill HOST NAME [SIG]  signal it (default TERM) and wait until it is gone
#                             (SIGKILL after LAB_KILL_WAIT seconds)
#   lab_running HOST NAME     whether it still runs
#   lab_log HOST NAME         its output so far
#   lab_ip HOST               its lab address (10.78.x.y / 192.168.56-57.x)
#   lab_iface HOST            its lab interface (for mesh-amb --interface)
#   lab_down                  kill everything started, remove the lab
#
# LAB_TIME_SCALE is what a scenario's time limits are multiplied by on this
# lab (set by lab_up unless given): 1 for netns; in VMs 2, and 4 under
# QEMU's emulation (TCG), where every instruction costs 10-40 times more.
#
# LAB_AMB is the path of the mesh-amb binary on the hosts.
#
# netns: namespaces ambsc-<pid>-<host> (unique per run) plus bridge
# namespaces ambsc-<pid>-br*, veth pairs created inside the bridge namespace,
# addresses 10.78.<seg>.x/24 that exist only inside the namespaces; the root
# namespace's interfaces and routes are never touched. Needs root and
# iproute2 (plus avahi-daemon and dbus-daemon for lab_up_segments).
#
# vagrant: hosts are the VMs h1..hN of vagrant/Vagrantfile (must be up;
# for two segments also b1..bB and the router r: AMB_VMS_B);
# commands go over `vagrant ssh-config` + ssh (what `vagrant ssh HOST -c`
# does, without starting Ruby for every command; LAB_VAGRANT_SSH=vagrant
# uses `vagrant ssh` itself); background commands are transient systemd
# units ambsc-<pid>-<name> (journal = log). lab_up stops the VMs' own
# mesh-amb@* and redis-server units for the run; lab_down starts them again.
#
# lab_down must run from an EXIT trap (scenario.sh installs one), so the lab
# is removed whatever happens. It kills only what this driver started: the
# process groups of lab_bg commands (each started under setsid) and, in
# netns mode, whatever is left inside this run's own namespaces.

LAB=${LAB:-netns}
LAB_RUN=ambsc-$$
# Seconds lab_kill waits for a signalled process before SIGKILL. A provider
# drains for --drain-period (2 s by default) before it exits.
LAB_KILL_WAIT=${LAB_KILL_WAIT:-15}
# Seconds to wait for links / daemons of the netns lab to come up.
LAB_UP_WAIT=${LAB_UP_WAIT:-20}
LAB_HOSTS=()        # hosts of the current lab, in creation order
LAB_NAMESPACES=()   # netns: every namespace created, in creation order
LAB_BG=()           # "host name" of every lab_bg process
declare -A LAB_PID=()      # netns: "host/name" -> pid (process group leader)
declare -A LAB_IPADDR=()   # host -> lab address
declare -A LAB_IFNAME=()   # host -> lab interface
LAB_DIR=
LAB_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_REPO=$(cd "$LAB_SCRIPT_DIR/../.." && pwd)

lab__die() {
  echo "lab($LAB): $*" >&2
  return 1
}

lab__ns() { echo "$LAB_RUN-$1"; }

lab__init() {
  [ -z "$LAB_DIR" ] || lab__die "lab already up" || return 1
  LAB_DIR=$(mktemp -d "${TMPDIR:-/tmp}/$LAB_RUN.XXXXXX")
  case "$LAB" in
    netns)
      [ "$(id -u)" -eq 0 ] || lab__die "the netns lab needs root (sudo LAB=netns ...)" || return 1
      command -v ip >/dev/null || lab__die "iproute2 (ip) is missing" || return 1
      LAB_AMB=${MESH_AMB_BIN:-$LAB_REPO/target/release/mesh-amb}
      LAB_TIME_SCALE=${LAB_TIME_SCALE:-1}
      [ -x "$LAB_AMB" ] || lab__die "no mesh-amb binary at $LAB_AMB (cargo build --release)" || return 1
      ;;
    vagrant)
      LAB_AMB=${MESH_AMB_BIN:-/usr/local/bin/mesh-amb}
      export VAGRANT_CWD=${VAGRANT_CWD:-$LAB_REPO/vagrant}
      ;;
    *) lab__die "unknown LAB=$LAB (netns or vagrant)" || return 1 ;;
  esac
}

# Polls "$@" every 20-100 ms until it succeeds (0) or SECONDS pass (1).
lab_wait() {
  local secs=$1 end pause=0.02
  shift
  end=$((${EPOCHREALTIME/./} + secs * 1000000))
  while :; do
    if "$@"; then return 0; fi
    [ "${EPOCHREALTIME/./}" -lt "$end" ] || return 1
    sleep "$pause"
    pause=0.1
  done
}

# ---------------------------------------------------------------- netns --

lab__ip() { ip "$@" >/dev/null; }

lab__netns_add() {
  local ns
  ns=$(lab__ns "$1")
  lab__ip netns add "$ns"
  LAB_NAMESPACES+=("$ns")
}

# The ip commands of the topology, shared with lab/src/lib.rs.
# shellcheck source=lab/netns.sh
. "$LAB_REPO/lab/netns.sh"

# Bridge namespace <run>-<suffix> with br0.
lab__netns_bridge() {
  lab__netns_add "$1"
  netns_bridge "$(lab__ns "$1")" >/dev/null
}

# lab__netns_host HOST BRIDGE IFNAME ADDR [GATEWAY]: namespace for HOST,
# plugged into BRIDGE's br0 through a veth (bridge port named HOST).
lab__netns_host() {
  local host=$1 ifname=$3 addr=$4 gw=${5:-} ns
  ns=$(lab__ns "$host")
  if [ -z "${LAB_IPADDR[$host]:-}" ]; then
    lab__netns_add "$host"
    lab__ip -n "$ns" link set lo up
    LAB_HOSTS+=("$host")
    LAB_IPADDR[$host]=$addr
    LAB_IFNAME[$host]=$ifname
  fi
  netns_plug "$(lab__ns "$2")" "$host" "$ns" "$ifname" "$addr" "$gw" >/dev/null
}

# Every host interface has carrier and its bridge port(s) forward.
lab__netns_links_up() {
  local host ns br
  for host in "${LAB_HOSTS[@]}"; do
    ns=$(lab__ns "$host")
    if ip -n "$ns" -o link show | grep -v ': lo:' | grep -qv 'state UP'; then return 1; fi
    while read -r br; do
      ip -n "$(lab__ns "$br")" -d -o link show dev "$host" 2>/dev/null |
        grep -q "state forwarding" || return 1
    done < "$LAB_DIR/$host.bridges"
  done
}

lab__netns_up() {
  local n=$1 i
  lab__netns_bridge br
  for ((i = 1; i <= n; i++)); do
    lab__netns_host "h$i" br eth0 "10.78.0.$i"
    echo br > "$LAB_DIR/h$i.bridges"
  done
  lab_wait "$LAB_UP_WAIT" lab__netns_links_up || lab__die "links not up after ${LAB_UP_WAIT}s"
}

lab__netns_segments() {
  local a=$1 b=$2 i
  lab__netns_bridge brA
  lab__netns_bridge brB
  lab__netns_host r brA ethA 10.78.1.254
  lab__netns_host r brB ethB 10.78.2.254
  printf 'brA\nbrB\n' > "$LAB_DIR/r.bridges"
  # Per-namespace sysctl: the root namespace's ip_forward is untouched.
  lab_exec r sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  for ((i = 1; i <= a; i++)); do
    lab__netns_host "a$i" brA eth0 "10.78.1.$i" 10.78.1.254
    echo brA > "$LAB_DIR/a$i.bridges"
  done
  for ((i = 1; i <= b; i++)); do
    lab__netns_host "b$i" brB eth0 "10.78.2.$i" 10.78.2.254
    echo brB > "$LAB_DIR/b$i.bridges"
  done
  lab_wait "$LAB_UP_WAIT" lab__netns_links_up || lab__die "links not up after ${LAB_UP_WAIT}s"
  # LAB_REFLECTOR=no: a plain router, to see discovery stop at it.
  if [ "${LAB_REFLECTOR:-yes}" = yes ]; then lab__netns_reflector r; fi
}

# avahi-daemon with enable-reflector=yes on HOST, on its own D-Bus (a
# dbus-daemon with a private socket, passed as DBUS_SYSTEM_BUS_ADDRESS) and
# its own /run (a tmpfs in a private mount namespace), as
# lab/src/lib.rs does: the machine's avahi and D-Bus are not touched.
lab__netns_reflector() {
  local host=$1 dir ns ifaces
  dir=$LAB_DIR/$host-avahi
  ns=$(lab__ns "$host")
  mkdir -p "$dir/services"
  # The configuration templates are shared with lab/src/lib.rs.
  sed "s|@SOCKET@|$dir/bus.sock|" "$LAB_REPO/lab/dbus-bus.conf" > "$dir/bus.conf"
  lab_bg "$host" dbus dbus-daemon --config-file="$dir/bus.conf" --nofork --print-address
  lab_wait 10 test -S "$dir/bus.sock" || lab__die "$host: dbus-daemon did not start" || return 1
  ifaces=$(ip -n "$ns" -o link show | awk -F': ' '$2 != "lo" {sub(/@.*/, "", $2); print $2}' | paste -sd, -)
  sed -e "s|@HOST@|$ns|" -e "s|@IPV6@|no|" -e "s|@IFACES@|$ifaces|" -e "s|@REFLECTOR@|yes|" -e "s|@DISALLOW@|no|" \
    "$LAB_REPO/lab/avahi-daemon.conf" > "$dir/avahi-daemon.conf"
  # shellcheck disable=SC2016 # $1/$2 expand in the inner sh
  lab_bg "$host" avahi env DBUS_SYSTEM_BUS_ADDRESS="unix:path=$dir/bus.sock" \
    unshare -m --propagation private sh -c 'set -e
      mount -t tmpfs -o mode=0755 lab-run /run
      mkdir -p /run/avahi-daemon
      mount --bind "$2" /etc/avahi/services
      exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$1"' \
    sh "$dir/avahi-daemon.conf" "$dir/services"
  lab_wait "$LAB_UP_WAIT" lab__log_has "$host" avahi "Server startup complete" ||
    lab__die "$host: avahi-daemon not up after ${LAB_UP_WAIT}s" || return 1
}

lab__log_has() { lab_log "$1" "$2" 2>/dev/null | grep -q "$3"; }

lab__netns_down() {
  local key pid ns i
  for key in "${!LAB_PID[@]}"; do
    kill -KILL -- "-${LAB_PID[$key]}" 2>/dev/null || true
  done
  # Anything else left inside our own namespaces is ours too.
  for ns in "${LAB_NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for key in "${!LAB_PID[@]}"; do
    lab_wait 5 lab__gone "${key%/*}" "${key#*/}" || echo "lab: $key survived SIGKILL" >&2
  done
  # Hosts before bridges; a veth pair dies with either end.
  for ((i = ${#LAB_NAMESPACES[@]} - 1; i >= 0; i--)); do
    ip netns del "${LAB_NAMESPACES[$i]}" || echo "lab: could not delete ${LAB_NAMESPACES[$i]}" >&2
  done
  LAB_NAMESPACES=()
  LAB_PID=()
}

# -------------------------------------------------------------- vagrant --

LAB_VAGRANT_SSH=${LAB_VAGRANT_SSH:-ssh-config}
# The VMs' private-network addresses; must match vagrant/Vagrantfile.
AMB_SUBNET=${AMB_SUBNET:-192.168.56}
AMB_SUBNET_B=${AMB_SUBNET_B:-192.168.57}
AMB_IP_BASE=${AMB_IP_BASE:-10}
declare -A LAB_VM=()       # vagrant: host -> VM (segment A's a1 is VM h1)
LAB_ROUTES=()              # vagrant: "host prefix via" routes lab_up added

lab__vagrant_sh() { # HOST SCRIPT: run a shell script as root in HOST's VM
  local vm=${LAB_VM[$1]:-$1} script=$2
  if [ "$LAB_VAGRANT_SSH" = vagrant ]; then
    vagrant ssh "$vm" -c "sudo bash -c $(printf '%q' "$script")" -- -q -o LogLevel=ERROR < /dev/null
  else
    # One connection per VM for the whole run, shared by every command:
    # a new one costs a key exchange, 0.9 s under QEMU's emulation.
    ssh -F "$LAB_DIR/ssh_config" -o LogLevel=ERROR -o ControlMaster=auto \
      -o "ControlPath=$LAB_DIR/ssh-%C" -o ControlPersist=yes \
      "$vm" "sudo bash -c $(printf '%q' "$script")" < /dev/null
  fi
}

# lab__vagrant_attach HOST=VM=IP...: the running VMs the lab's hosts are.
lab__vagrant_attach() {
  local entry host vm ip vms=() state
  for entry in "$@"; do
    IFS='=' read -r host vm ip <<<"$entry"
    vms+=("$vm")
  done
  state=$(vagrant status --machine-readable "${vms[@]}") ||
    lab__die "vagrant status failed (VAGRANT_CWD=$VAGRANT_CWD; enough VMs: AMB_VMS, AMB_VMS_B?)" || return 1
  for vm in "${vms[@]}"; do
    grep -q ",$vm,state,running" <<<"$state" ||
      lab__die "VM $vm is not running: run 'vagrant up' in $VAGRANT_CWD (AMB_VMS, AMB_VMS_B)" || return 1
  done
  # Hosts join the lab only now: lab_down cleans up every host in it, and a
  # VM that is not there has nothing to clean.
  for entry in "$@"; do
    IFS='=' read -r host vm ip <<<"$entry"
    LAB_HOSTS+=("$host")
    LAB_VM[$host]=$vm
    LAB_IPADDR[$host]=$ip
  done
  if [ "$LAB_VAGRANT_SSH" != vagrant ]; then
    vagrant ssh-config "${vms[@]}" > "$LAB_DIR/ssh_config"
  fi
  if [ -z "${LAB_TIME_SCALE:-}" ]; then
    # systemd-detect-virt says "qemu" for emulation, "kvm", "oracle"
    # (VirtualBox) and so on for hardware virtualisation.
    case "$(lab__vagrant_sh "${LAB_HOSTS[0]}" "systemd-detect-virt || true")" in
      qemu) LAB_TIME_SCALE=4 ;;
      *) LAB_TIME_SCALE=2 ;;
    esac
  fi
  for host in "${LAB_HOSTS[@]}"; do
    ip=${LAB_IPADDR[$host]}
    # The NIC holding the private-network address (eth1 on VirtualBox,
    # something else on libvirt): never the NAT adapter.
    LAB_IFNAME[$host]=$(lab__vagrant_sh "$host" \
      "ip -o -4 addr show | awk '\$4 ~ /^${ip//./\\.}\\// {print \$2; exit}'")
    [ -n "${LAB_IFNAME[$host]}" ] ||
      lab__die "$host (VM ${LAB_VM[$host]}) has no address $ip: is AMB_SUBNET right?" || return 1
    # The scenarios own the VMs while they run: park the provisioned role
    # units (they hold ports 6379 and 5353 peers) and remember them.
    lab__vagrant_sh "$host" "
      systemctl list-units --state=active --plain --no-legend 'mesh-amb@*' redis-server.service |
        awk '{print \$1}' > /run/$LAB_RUN.parked
      xargs -r systemctl stop < /run/$LAB_RUN.parked"
  done
}

lab__vagrant_up() {
  local n=$1 i hosts=()
  for ((i = 1; i <= n; i++)); do hosts+=("h$i=h$i=$AMB_SUBNET.$((AMB_IP_BASE + i))"); done
  lab__vagrant_attach "${hosts[@]}"
}

# Segment A's hosts a1..aA are the VMs h1..hA, segment B's b1..bB the VMs
# b1..bB, and r the router VM (AMB_VMS_B=B in vagrant/Vagrantfile). Each
# host gets a route to the other segment through r for the run.
lab__vagrant_segments() {
  local a=$1 b=$2 i hosts=() host
  for ((i = 1; i <= a; i++)); do hosts+=("a$i=h$i=$AMB_SUBNET.$((AMB_IP_BASE + i))"); done
  for ((i = 1; i <= b; i++)); do hosts+=("b$i=b$i=$AMB_SUBNET_B.$((AMB_IP_BASE + i))"); done
  hosts+=("r=r=$AMB_SUBNET.254")
  lab__vagrant_attach "${hosts[@]}" || return 1
  for host in "${LAB_HOSTS[@]}"; do
    case "$host" in
      a*) LAB_ROUTES+=("$host $AMB_SUBNET_B.0/24 $AMB_SUBNET.254") ;;
      b*) LAB_ROUTES+=("$host $AMB_SUBNET.0/24 $AMB_SUBNET_B.254") ;;
    esac
  done
  local route prefix via
  for route in "${LAB_ROUTES[@]}"; do
    read -r host prefix via <<<"$route"
    lab_exec "$host" ip route replace "$prefix" via "$via" ||
      lab__die "$host: no route to $prefix via $via" || return 1
  done
  # LAB_REFLECTOR=no: a plain router, to see discovery stop at it; its
  # avahi-daemon is parked like the role units.
  if [ "${LAB_REFLECTOR:-yes}" != yes ]; then
    lab__vagrant_sh r "systemctl stop avahi-daemon.socket avahi-daemon.service
      printf 'avahi-daemon.socket\navahi-daemon.service\n' >> /run/$LAB_RUN.parked"
  fi
}

lab__vagrant_down() {
  local host route prefix via
  for route in "${LAB_ROUTES[@]}"; do
    read -r host prefix via <<<"$route"
    lab_exec "$host" ip route del "$prefix" via "$via" || echo "lab: could not remove $host's route to $prefix" >&2
  done
  LAB_ROUTES=()
  for host in "${LAB_HOSTS[@]}"; do
    lab__vagrant_sh "$host" "
      systemctl kill -s KILL '$LAB_RUN-*' 2>/dev/null
      systemctl stop '$LAB_RUN-*' 2>/dev/null
      systemctl reset-failed '$LAB_RUN-*' 2>/dev/null
      if [ -f /run/$LAB_RUN.parked ]; then xargs -r systemctl start < /run/$LAB_RUN.parked; rm -f /run/$LAB_RUN.parked; fi
      true" || echo "lab: cleanup of $host failed" >&2
  done
  if [ "$LAB_VAGRANT_SSH" != vagrant ]; then
    for host in "${LAB_HOSTS[@]}"; do
      ssh -F "$LAB_DIR/ssh_config" -o LogLevel=ERROR -o "ControlPath=$LAB_DIR/ssh-%C" \
        -O exit "${LAB_VM[$host]}" 2> /dev/null || true
    done
  fi
}

# ----------------------------------------------------------- the verbs --

lab_up() {
  lab__init || return 1
  case "$LAB" in
    netns) lab__netns_up "${1:-3}" ;;
    vagrant) lab__vagrant_up "${1:-3}" ;;
  esac
}

lab_up_segments() {
  lab__init || return 1
  case "$LAB" in
    netns) lab__netns_segments "${1:-1}" "${2:-1}" ;;
    vagrant) lab__vagrant_segments "${1:-1}" "${2:-1}" ;;
  esac
}

lab_exec() {
  local host=$1
  shift
  case "$LAB" in
    netns) ip netns exec "$(lab__ns "$host")" "$@" ;;
    vagrant) lab__vagrant_sh "$host" "$(printf '%q ' "$@")" ;;
  esac
}

lab_bg() {
  local host=$1 name=$2
  shift 2
  LAB_BG+=("$host $name")
  case "$LAB" in
    netns)
      # Created here, not by the background redirect, so lab_log can read it
      # at once.
      : > "$LAB_DIR/$host-$name.log"
      setsid ip netns exec "$(lab__ns "$host")" "$@" > "$LAB_DIR/$host-$name.log" 2>&1 < /dev/null &
      LAB_PID[$host/$name]=$!
      # Out of the job table: no "Killed" notices; bash still reaps it.
      disown "$!"
      ;;
    vagrant)
      # systemd expands $VAR and ${VAR} in a unit's command line itself
      # (a client loop's ${EPOCHREALTIME/./} became empty); "$$" is its
      # escape for a "$".
      lab__vagrant_sh "$host" "systemd-run --quiet --collect --unit=$LAB_RUN-$name \
        --property=KillMode=control-group --property=WorkingDirectory=/tmp -- $(printf '%q ' "${@//\$/\$\$}")"
      ;;
  esac
}

lab_running() {
  case "$LAB" in
    netns) kill -0 "${LAB_PID[$1/$2]:?no process $2 on $1}" 2>/dev/null ;;
    vagrant) lab__vagrant_sh "$1" "systemctl is-active --quiet $LAB_RUN-$2" ;;
  esac
}

lab__gone() { ! lab_running "$1" "$2"; }

lab_kill() {
  local host=$1 name=$2 sig=${3:-TERM}
  case "$LAB" in
    netns) kill "-$sig" -- "-${LAB_PID[$host/$name]:?no process $name on $host}" 2>/dev/null || true ;;
    vagrant) lab__vagrant_sh "$host" "systemctl kill -s $sig $LAB_RUN-$name" || true ;;
  esac
  if ! lab_wait "$LAB_KILL_WAIT" lab__gone "$host" "$name"; then
    echo "lab: $host/$name still running ${LAB_KILL_WAIT}s after SIG$sig: SIGKILL" >&2
    lab_kill "$host" "$name" KILL
  fi
}

lab_log() {
  case "$LAB" in
    netns) cat "$LAB_DIR/$1-$2.log" ;;
    vagrant) lab__vagrant_sh "$1" "journalctl -q -o cat --no-pager -u $LAB_RUN-$2" ;;
  esac
}

lab_ip() { echo "${LAB_IPADDR[$1]:?unknown host $1}"; }

lab_iface() { echo "${LAB_IFNAME[$1]:?unknown host $1}"; }

# Prints the last LINES lines of every background process's output.
lab_tails() {
  local lines=${1:-25} entry
  for entry in "${LAB_BG[@]}"; do
    echo "----- ${entry/ //} (last $lines lines) -----"
    lab_log "${entry% *}" "${entry#* }" 2>&1 | tail -n "$lines"
  done
}

# Removes the lab. Keeps LAB_DIR (logs) when LAB_KEEP=1, removes it otherwise.
lab_down() {
  [ -n "$LAB_DIR" ] || return 0
  case "$LAB" in
    netns) lab__netns_down ;;
    vagrant) lab__vagrant_down ;;
  esac
  if [ "${LAB_KEEP:-0}" = 1 ]; then
    echo "lab: logs kept in $LAB_DIR" >&2
  else
    rm -rf "$LAB_DIR"
  fi
  LAB_DIR=
}
