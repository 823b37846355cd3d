#!/usr/bin/env bash
# Reaction times of the discovery mesh, measured in the namespace lab (needs
# root): provider start -> routed, graceful leave -> no longer chosen,
# SIGKILL -> removed, and the migration gap. Prints p50 and max.
#   bench/mesh.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
MESH_RUNS=${1:-10} cargo test --release -q --test mesh -- --ignored --exact figures --nocapture 2>&1 \
  | grep -E '^(provider|graceful|SIGKILL|migration|  the same)|panicked|error'
