# shellcheck shell=bash
# Checks made before any build, so that a missing prerequisite costs one
# clear line instead of minutes of compiling and a wall of failures.

# The command that runs WHO as root with the caller's Rust toolchain, to be
# typed in the user's own shell ($PATH and $HOME expand there): sudo resets
# PATH (losing ~/.cargo/bin) and HOME (so rustup's proxies look for
# /root/.rustup and find no toolchain).
preflight__sudo_form() {
  # shellcheck disable=SC2016 # printed for the user's shell to expand
  printf 'sudo env "PATH=$PATH" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" %s' "$1"
}

# require_root WHO WHY: exits 1 unless running as root.
require_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  echo "$1: $2 need root; run: $(preflight__sudo_form "$1")" >&2
  exit 1
}

# require_cargo WHO: exits 1 unless a cargo at least as new as Cargo.toml's
# rust-version runs (Debian 12's own cargo is 1.63).
require_cargo() {
  local who=$1 need version
  need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
  if ! command -v cargo > /dev/null; then
    echo "$who: cargo not found on PATH: install Rust $need or newer with rustup (https://rustup.rs)," \
      "or under sudo run: $(preflight__sudo_form "$who")" >&2
    exit 1
  fi
  if ! version=$(cargo --version 2> /dev/null); then
    echo "$who: cargo is on PATH but does not run (no default toolchain?); under sudo run:" \
      "$(preflight__sudo_form "$who")" >&2
    exit 1
  fi
  version=${version#cargo }
  version=${version%% *}
  if [ "$(printf '%s\n%s\n' "$need" "$version" | sort -V | head -n 1)" != "$need" ]; then
    echo "$who: cargo $version is too old: mesh-amb needs Rust $need or newer (rustup update, or https://rustup.rs)" >&2
    exit 1
  fi
}
