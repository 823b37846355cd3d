#!/usr/bin/env bash
# Builds the lab's Debian 12 box for Vagrant's libvirt provider from Debian's
# mirror alone (no Vagrant Cloud), and adds it to Vagrant: for labs without
# internet, or to trust nothing but Debian. Run as root (debootstrap, loop
# devices). See vagrant/README.md.
#
#   vagrant/build-box.sh            build (or reuse) and add the box
#   vagrant/build-box.sh --name     print the box's name and exit
#
# The box is a compressed qcow2 image: one ext4 file system on the whole
# disk (extlinux boots it), Debian's cloud kernel (virtio drivers, a quick boot under
# emulation), systemd-networkd (DHCP on the management NIC; Vagrant adds
# the private networks), openssh-server, sudo, rsync (the synced folder),
# redis-server, redis-tools, avahi-daemon and avahi-utils, every package
# upgraded from bookworm-updates and bookworm-security. The `vagrant` user
# takes Vagrant's well-known insecure key, which `vagrant up` replaces.
# Each VM draws its SSH host key (Ed25519 only) and machine-id at first
# boot.
#
# The built box is cached in AMB_BOX_CACHE (default /var/cache/mesh-amb),
# outside the work tree, under a name made from the content of this script
# and of box.Vagrantfile: an edit builds a new box, no edit reuses it.
# Older boxes are removed then, but for the newest of them (see prune below).
# Environment:
#   AMB_BOX_CACHE   where built boxes are kept
#   DEBIAN_MIRROR   default http://deb.debian.org/debian (and -security)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$0" "$here/box.Vagrantfile" | sha256sum | cut -c1-12)
name=mesh-amb/debian12-$key
if [ "${1:-}" = --name ]; then
  echo "$name"
  exit 0
elif [ $# -gt 0 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "build-box: run as root (debootstrap, loop devices)" >&2; exit 1; }

cache=${AMB_BOX_CACHE:-/var/cache/mesh-amb}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
box=$cache/debian12-$key.box
size_gib=8

# Boxes of other versions of this script: each holds about 300 MB in the
# cache, as much again in libvirt's storage pools (`vagrant box remove`
# leaves the volume vagrant-libvirt made of it there) and a line in
# `vagrant box list`. Once this version's box is there, all of them go but
# the newest (a second checkout at another version, such as a branch and
# CI's clone of main, then does not rebuild its box at every run) and any
# whose volume backs a VM's disk (a lab brought up from it and kept; a
# later run looks again). Nothing is removed when a pool cannot be listed.
prune() {
  local pools pool listing vol vols=() backing='' boxes k olds newest mine keep
  vsh() { virsh -q -c qemu:///system "$@"; }
  pools=$(vsh pool-list --all --name 2> /dev/null) ||
    { echo "build-box: libvirt is not reachable; older boxes, if any, left"; return 0; }
  for pool in $pools; do
    listing=$(vsh vol-list --pool "$pool" 2> /dev/null) ||
      { echo "build-box: cannot list libvirt pool $pool; older boxes, if any, left"; return 0; }
    while read -r vol _; do
      [ -n "$vol" ] || continue
      vols+=("$pool/$vol")
      backing+=$(vsh vol-dumpxml --pool "$pool" "$vol" < /dev/null |
        awk '/<backingStore>/ {b = 1} b && /<path>/ {gsub(/ *<\/?path>/, ""); print; b = 0}')$'\n'
    done <<< "$listing"
  done
  boxes=$(vagrant box list 2> /dev/null | awk '$1 ~ /^mesh-amb\/debian12-[0-9a-f]+$/ {print $1}')
  # Keys of boxes: listed by Vagrant, cached, or in a pool.
  olds=$({
    echo "${boxes//mesh-amb\/debian12-/}"
    find "$cache" -maxdepth 1 -name 'debian12-*.box' -printf '%f\n' 2> /dev/null |
      sed 's/^debian12-//; s/\.box$//'
    printf '%s\n' "${vols[@]}" | sed -n 's|^.*/mesh-amb-VAGRANTSLASH-debian12-\([0-9a-f]*\)_vagrant_box_image_.*|\1|p'
  } | grep -vx "$key" | sort -u)
  newest=$(find "$cache" -maxdepth 1 -name 'debian12-*.box' ! -name "debian12-$key.box" \
    -printf '%T@ %f\n' 2> /dev/null | sort -rn | awk 'NR == 1 {print $2}')
  for k in $olds; do
    [ "debian12-$k.box" != "$newest" ] || continue
    mine=() keep=
    for vol in "${vols[@]}"; do
      [[ "$vol" == */mesh-amb-VAGRANTSLASH-debian12-${k}_vagrant_box_image_* ]] || continue
      mine+=("$vol")
      if grep -q "/${vol#*/}\$" <<< "$backing"; then
        keep=yes
      fi
    done
    if [ -n "$keep" ]; then
      echo "build-box: kept mesh-amb/debian12-$k: its volume backs a VM's disk"
      continue
    fi
    for vol in "${mine[@]}"; do
      vsh vol-delete --pool "${vol%%/*}" "${vol#*/}" > /dev/null && echo "build-box: removed volume $vol"
    done
    if grep -qx "mesh-amb/debian12-$k" <<< "$boxes"; then
      vagrant box remove --force --all "mesh-amb/debian12-$k" > /dev/null &&
        echo "build-box: removed box mesh-amb/debian12-$k"
    fi
    rm -f "$cache/debian12-$k.box"
  done
}

if vagrant box list 2>/dev/null | grep -q "^$name "; then
  echo "build-box: $name is already added"
  prune || echo "build-box: pruning older boxes failed" >&2
  exit 0
fi

if [ ! -f "$box" ]; then
  for tool in debootstrap qemu-img mkfs.ext4 losetup; do
    command -v "$tool" >/dev/null || {
      echo "build-box: $tool is missing (apt-get install debootstrap qemu-utils e2fsprogs mount)" >&2
      exit 1
    }
  done
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/build.XXXXXX")
  root=$work/root loop=
  cleanup() {
    for m in dev/pts dev proc sys ""; do
      mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
    done
    [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work"
  }
  trap cleanup EXIT

  echo "build-box: debootstrap into a ${size_gib} GiB image (a few minutes)"
  raw=$work/disk.raw
  truncate -s "${size_gib}G" "$raw"
  # The file system takes the whole disk, no partition table: extlinux
  # boots it from its first sector (which ext4 leaves free), and nothing
  # needs partition device nodes (a container's loop devices have none).
  # No 64bit feature: extlinux boots ext4 without it for sure.
  mkfs.ext4 -q -L root -O ^64bit "$raw"
  loop=$(losetup -f --show "$raw")
  mkdir -p "$root"
  mount "$loop" "$root"
  debootstrap --variant=minbase \
    --include=linux-image-cloud-amd64,initramfs-tools,extlinux,systemd,systemd-sysv,udev,dbus,kmod,iproute2,iputils-ping,procps,less,netbase,openssh-server,sudo,rsync,ca-certificates,redis-server,redis-tools,avahi-daemon,avahi-utils \
    bookworm "$root" "$mirror" > "$work/debootstrap.log" ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }

  cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
  mount -t proc proc "$root/proc"
  mount --bind /sys "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
  in_root apt-get update -qq
  in_root apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade > /dev/null
  in_root apt-get clean

  echo "build-box: configuring"
  echo "LABEL=root / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
  echo debian12 > "$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 debian12\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
  # DHCP on any Ethernet NIC Vagrant has not configured: its files
  # (50-vagrant-*.network) sort first and win for the private networks.
  cat > "$root/etc/systemd/network/99-dhcp.network" <<'EOF'
[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
EOF
  in_root systemctl enable -q systemd-networkd
  # The VM waits for no NIC that stays down (an isolated network has no
  # DHCP answer for a NIC Vagrant has not configured yet).
  in_root systemctl mask -q systemd-networkd-wait-online.service
  # A host key is drawn at first boot, one per VM, and only an Ed25519
  # one: `ssh-keygen -A` also draws RSA 3072, which under emulation with
  # five VMs booting took longer than ssh.service's 90 s start limit (the
  # unit failed, and its restart drew all three again: sshd listened 2 min
  # 19 s after it first started). Ed25519 takes a fraction of a second.
  rm -f "$root"/etc/ssh/ssh_host_*
  mkdir -p "$root/etc/systemd/system/ssh.service.d"
  cat > "$root/etc/systemd/system/ssh.service.d/host-keys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || exec /usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
EOF
  printf 'UseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\n' > "$root/etc/ssh/sshd_config.d/vagrant.conf"
  # Nothing for e2scrub to reap (no LVM), and it would start in the
  # boot's busiest minute.
  in_root systemctl mask -q e2scrub_reap.service e2scrub_all.timer
  # An empty machine-id: systemd makes a new one at first boot.
  : > "$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"

  in_root useradd -m -s /bin/bash vagrant
  echo "vagrant:vagrant" | in_root chpasswd
  echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$root/etc/sudoers.d/vagrant"
  chmod 0440 "$root/etc/sudoers.d/vagrant"
  install -d -m 0700 "$root/home/vagrant/.ssh"
  insecure=$(find /usr/share/rubygems-integration /opt/vagrant /usr/share/vagrant \
    -path '*/keys/vagrant.pub' 2>/dev/null | head -1 || true)
  [ -n "$insecure" ] || { echo "build-box: Vagrant's insecure key (keys/vagrant.pub) not found: is vagrant installed?" >&2; exit 1; }
  install -m 0600 "$insecure" "$root/home/vagrant/.ssh/authorized_keys"
  in_root chown -R vagrant:vagrant /home/vagrant/.ssh

  # The roles' services start only when provisioned (vagrant/provision.sh).
  in_root systemctl disable -q redis-server

  echo "build-box: boot loader"
  cat > "$root/boot/extlinux.conf.tmp" <<'EOF'
DEFAULT debian
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=root ro console=ttyS0 net.ifnames=0 quiet
EOF
  mkdir -p "$root/boot/extlinux"
  mv "$root/boot/extlinux.conf.tmp" "$root/boot/extlinux/extlinux.conf"
  # /vmlinuz and /initrd.img are the links Debian moves at every kernel
  # upgrade, so an upgraded VM boots its new kernel.
  in_root extlinux --install /boot/extlinux > /dev/null
  for m in dev/pts dev proc sys; do umount "$root/$m"; done
  rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/*
  umount "$root"
  losetup -d "$loop"
  loop=

  echo "build-box: packing"
  qemu-img convert -c -O qcow2 "$raw" "$work/box.img"
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$size_gib" > "$work/metadata.json"
  cp "$here/box.Vagrantfile" "$work/Vagrantfile"
  tar -C "$work" -czf "$box.part" box.img metadata.json Vagrantfile
  mv "$box.part" "$box"
  trap - EXIT
  cleanup
fi
vagrant box add --force --name "$name" "$box"
echo "build-box: added $name (AMB_BOX=$name vagrant up --provider=libvirt)"
prune || echo "build-box: pruning older boxes failed" >&2
