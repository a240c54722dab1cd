#!/usr/bin/env bash
# The main job until `vendctl demo` exists: simulate a fleet of ten machines
# writing a million events offline, then verify and replay the log.
# Usage: scripts/run.sh [DATA_DIR]   (default: a new directory under /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --locked -p tools
vendctl=./target/debug/vendctl
data="${1:-$(mktemp -d /tmp/vendledger-XXXXXX)}"
if [ -e "$data/log" ]; then
  echo "run: $data already holds a log; pass a new directory" >&2
  exit 1
fi

"$vendctl" simulate --offline --data "$data" --machines 10 --events-per-machine 100000
"$vendctl" verify --data "$data"
"$vendctl" replay --data "$data" --period month
echo
echo "The log is in $data. Next: $vendctl dump --data $data | head -3"
