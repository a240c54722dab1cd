#!/usr/bin/env bash
# The main job: installs what a fresh machine lacks, builds, and runs
# `vendctl demo` — three replicas, a fleet selling in real time, the
# dashboard on http://127.0.0.1:8000 (and 8001, 8002), and the machine app
# when there is a display. Ctrl-C stops everything.
# Usage: scripts/run.sh [vendctl demo options]   e.g. --dir DIR --no-gui --base-port 9000
# (scripts/drill.sh is the scripted failover drill: a primary killed under load.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

if [ ! -x "$bin/vendctl" ] || [ ! -x "$bin/vend-replica" ]; then
  echo "building vendledger: the first build compiles RocksDB and takes about"
  echo "20 minutes on 2 cores (later runs take seconds)..."
fi
# The same build as the tests (one profile, the whole workspace), so the
# two README commands never compile RocksDB twice.
cargo build --workspace --locked
exec "$bin/vendctl" demo "$@"
