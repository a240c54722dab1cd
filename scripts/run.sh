#!/usr/bin/env bash
# The main job until `vendctl demo` exists: a local three-replica cluster,
# a fleet of ten simulated machines selling over the real link, the primary
# killed with SIGKILL in the middle, the backup taking over, and at the end
# every replica's log verified and replayed.
# Usage: scripts/run.sh [DIR]   (default: a new directory under /tmp)
#        BASE_PORT=7100 picks the ports (machines P+1..3, status P+21..23).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --locked -p tools -p replica
vendctl=$PWD/target/debug/vendctl
dir="${1:-$(mktemp -d /tmp/vendledger-XXXXXX)}"
mkdir -p "$dir"
port="${BASE_PORT:-7100}"

"$vendctl" cluster up --dir "$dir" --base-port "$port" > "$dir/cluster-up.log" 2>&1 &
cluster_pid=$!
trap 'kill -INT $cluster_pid 2>/dev/null; wait $cluster_pid 2>/dev/null' EXIT

echo "waiting for the replicas to elect a primary..."
for _ in $(seq 150); do
  "$vendctl" status --cluster "$dir" --table 2>/dev/null | grep -q ' primary ' && break
  sleep 0.1
done
"$vendctl" status --cluster "$dir" --table

echo
echo "10 machines selling 200,000 events, each storing locally first and shipping to the primary..."
"$vendctl" simulate --cluster "$dir" --machines 10 --events-per-machine 20000 > "$dir/fleet.json" &
fleet_pid=$!
sleep 4
"$vendctl" cluster kill --dir "$dir" --primary
sleep 1
"$vendctl" status --cluster "$dir" --table
wait $fleet_pid
echo "(cluster up restarted the killed replica; it rejoined as a follower and caught up)"
sleep 2
"$vendctl" status --cluster "$dir" --table

kill -INT $cluster_pid
wait $cluster_pid 2>/dev/null || true
trap - EXIT
echo
for n in 1 2 3; do
  printf 'replica-%s: ' "$n"
  "$vendctl" verify --data "$dir/replica-$n"
done
echo
"$vendctl" replay --data "$dir/replica-2" | head -16
echo "..."
echo "Everything is in $dir (replica-N.log, fleet.json; try: $vendctl dump --data $dir/replica-1 | head)"
