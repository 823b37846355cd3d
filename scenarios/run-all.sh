#!/usr/bin/env bash
# Runs every scenario (scenarios/NN-*.sh) on the lab named by LAB (netns,
# the default, or vagrant) and prints one PASS/FAIL/SKIP line per run, then
# a summary line. Exit status 0 only if none failed.
#
#   sudo scenarios/run-all.sh                 # every scenario, netns lab
#   sudo scenarios/run-all.sh 02 05           # those whose names start so
#   sudo REPEAT=5 scenarios/run-all.sh        # each one five times
#   LAB=vagrant scenarios/run-all.sh          # in the VMs (vagrant/README.md)
#
# For LAB=netns it first builds target/release/mesh-amb (cargo build
# --release --locked) unless MESH_AMB_BIN names a binary to use instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
export LAB=${LAB:-netns}
REPEAT=${REPEAT:-1}

if [ "$LAB" = netns ] && [ -z "${MESH_AMB_BIN:-}" ]; then
  cargo build --release --locked --quiet
fi

scenarios=()
for f in "$here"/[0-9][0-9]-*.sh; do
  name=$(basename "$f" .sh)
  if [ "$#" -eq 0 ]; then
    scenarios+=("$f")
  else
    for want in "$@"; do
      if [[ "$name" == "$want"* ]]; then scenarios+=("$f"); break; fi
    done
  fi
done
[ "${#scenarios[@]}" -gt 0 ] || { echo "run-all: no scenario matches: $*" >&2; exit 2; }

passed=0 failed=0 skipped=0 failures=()
for ((round = 1; round <= REPEAT; round++)); do
  for f in "${scenarios[@]}"; do
    rc=0
    bash "$f" || rc=$?
    case "$rc" in
      0) passed=$((passed + 1)) ;;
      77) skipped=$((skipped + 1)) ;;
      *) failed=$((failed + 1)); failures+=("$(basename "$f" .sh)") ;;
    esac
  done
done

[ "$failed" -eq 0 ] || echo "failed: ${failures[*]}"
echo "scenarios: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
