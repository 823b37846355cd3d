#!/usr/bin/env bash
# The fault scenarios of tests/faults.rs at full length, one at a time (so
# they do not compete for the CPU), printing each scenario's `faults:` line:
#   bench/faults.sh [SOAK_SECS]
# SOAK_SECS (default 600) is the graceful soak's length; the FAULTS_*
# variables below may be set to override the other lengths.
# Needs root (network namespaces), like the tests. The whole output goes to
# $FAULTS_LOG (default target/faults-bench.log).
set -euo pipefail
cd "$(dirname "$0")/.."

export FAULTS_SOAK_SECS=${1:-600}
export FAULTS_CRASH_SOAK_SECS=${FAULTS_CRASH_SOAK_SECS:-300}
export FAULTS_LOSS_SECS=${FAULTS_LOSS_SECS:-120}
export FAULTS_PARTITION_SECS=${FAULTS_PARTITION_SECS:-30}
export FAULTS_FLOOD_SECS=${FAULTS_FLOOD_SECS:-30}
log=${FAULTS_LOG:-target/faults-bench.log}
mkdir -p "$(dirname "$log")"
: >"$log"

# The summaries (libtest prints each after "test NAME ... "), and what a
# failing scenario said.
summaries() {
  tee -a "$log" | sed -n -u -e 's/.*\(faults: \)/\1/p' -e 's/.*\(soak: \|soak (\)/\1/p' \
    -e '/FAILED\|panicked at/p'
}

cargo test -q --test faults --no-run 2>&1 | tee -a "$log" >/dev/null
echo "faults: soak ${FAULTS_SOAK_SECS} s, crash soak ${FAULTS_CRASH_SOAK_SECS} s, loss ${FAULTS_LOSS_SECS} s," \
  "partition ${FAULTS_PARTITION_SECS} s, flood ${FAULTS_FLOOD_SECS} s; log in $log"
cargo test --test faults -- --nocapture --test-threads=1 2>&1 | summaries
