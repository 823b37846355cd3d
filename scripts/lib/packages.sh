# shellcheck shell=bash
# ensure_packages WHO PACKAGE...: installs the Debian packages that are
# missing (as root, with apt-get), or says which are missing and exits 1.
# Packages never start their services while this runs: an avahi-daemon in
# the root network namespace would announce on the real network.
ensure_packages() {
  local who=$1 p missing=()
  shift
  # Not Debian: the README lists what to install.
  command -v dpkg-query >/dev/null || return 0
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "$who: missing packages: ${missing[*]} (run as root on Debian, or install them)" >&2
    exit 1
  fi
  echo "$who: installing ${missing[*]}"
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  return "$rc"
}

# What building any Rust program needs on Linux: rustc links through the C
# compiler driver, with the C library's start files. A bare Debian with
# only rustup has neither.
# shellcheck disable=SC2034 # used by the scripts that source this file
RUST_LINK_PACKAGES=(gcc libc6-dev)
