#!/usr/bin/env bash
# The scripted failover drill (the main job is scripts/run.sh, the demo): a
# local three-replica cluster, a fleet of ten simulated machines selling
# over the real link, the primary killed with SIGKILL in the middle, the
# backup taking over, and at the end every replica's log verified and
# replayed.
# Usage: scripts/drill.sh [DIR]   (default: a new directory under /tmp)
#        BASE_PORT=7100 picks the ports (machines P+1..3, status P+21..23).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

if [ ! -x "$bin/vendctl" ] || [ ! -x "$bin/vend-replica" ]; then
  echo "building vendctl and vend-replica: the first build compiles RocksDB and takes about"
  echo "20 minutes on 2 cores (later runs take seconds)..."
fi
# The whole workspace, like every other build here: building single
# packages resolves other features and rebuilds RocksDB.
cargo build --locked --workspace
vendctl=$bin/vendctl
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
cat <<'TERMS'
  (tip: the last entry a replica holds; commit: the last one a majority
   stores, the only ones machines are told are safe; lag: entries a
   follower is behind; naks sent/received: requests for datagrams that
   never arrived; retransmitted: entries sent again to answer them)
TERMS

echo
echo "10 machines selling 200,000 events, each storing locally first and shipping to the primary..."
echo "(their keys are new: a machine's first handshake may be refused until the replicas"
echo " reload their key directory, which they do within a second; the machine retries)"
"$vendctl" simulate --cluster "$dir" --machines 10 --events-per-machine 20000 > "$dir/fleet.json" &
fleet_pid=$!
sleep 4
"$vendctl" cluster kill --dir "$dir" --primary
sleep 1
"$vendctl" status --cluster "$dir" --table
wait $fleet_pid
echo "(resent: events a machine sent again to the new primary after the failover;"
echo " offline periods: times a simulated machine lost its link on purpose and kept"
echo " selling from its own ledger, shipping the events once back online)"
echo "(cluster up restarted the killed replica; it rejoined as a follower and caught up)"
sleep 2
"$vendctl" status --cluster "$dir" --table

kill -INT $cluster_pid
wait $cluster_pid 2>/dev/null || true
trap - EXIT
echo
heads=()
for n in 1 2 3; do
  line="$("$vendctl" verify --data "$dir/replica-$n")"
  echo "replica-$n: $line"
  heads+=("$(sed -n 's/.* head \([0-9a-f]*\) .*/\1/p' <<< "$line")")
done
if [ -n "${heads[0]}" ] && [ "${heads[0]}" = "${heads[1]}" ] && [ "${heads[1]}" = "${heads[2]}" ]; then
  echo "The three replicas' heads match: each holds the same log, entry for entry (head ${heads[0]:0:16}…)."
else
  echo "The replicas' heads differ: ${heads[*]}" >&2
  exit 1
fi
echo
"$vendctl" replay --data "$dir/replica-2" | head -16
echo "..."
echo "Everything is in $dir (replica-N.log, fleet.json; try: $vendctl dump --data $dir/replica-1 | head)"
