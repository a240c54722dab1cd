#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is
# missing, checks formatting and lints, runs every test, then drives the
# real binaries end to end (those tests live in tools/tests and tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The export test reads our CSV and JSON lines with DuckDB's Python package,
# which it installs into a virtual environment when missing.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup: installing python3 and python3-venv"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends python3 python3-venv \
    || { apt-get update && apt-get install -y --no-install-recommends python3 python3-venv; }
fi

start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the multi-process tests run the real binaries)"
cargo build --workspace --locked

step "chromium and chromedriver (the dashboard's browser test drives them)"
browser_need=()
have_package chromium || browser_need+=(chromium)
have_package chromium-driver || browser_need+=(chromium-driver)
if [ "${#browser_need[@]}" -gt 0 ]; then
  echo "test: installing ${browser_need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
  else
    sudo=
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y --no-install-recommends "${browser_need[@]}"; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${browser_need[@]}"
  fi
fi

step "cargo test"
cargo test --workspace --locked

step "vend-vm starts and renders under Xvfb"
shot="$(mktemp --suffix=.png /tmp/vend-vm-smoke-XXXXXX)"
bash scripts/screenshot-vm.sh "$shot"
colors="$(identify -format %k "$shot")"
if [ "$colors" -lt 100 ]; then
  echo "the vend-vm screenshot has only $colors colours: the window did not draw" >&2
  exit 1
fi
echo "screenshot has $colors colours"

step "scripts/run.sh (the README's run command) starts the demo and stops on Ctrl-C"
demo_dir="$(mktemp -d /tmp/vendledger-demo-XXXXXX)"
scripts/run.sh --no-gui --dir "$demo_dir" --base-port 8700 > "$demo_dir/run.out" 2>&1 &
demo_pid=$!
for _ in $(seq 120); do
  grep -q "Ctrl-C stops everything" "$demo_dir/run.out" && break
  kill -0 "$demo_pid" 2>/dev/null || break
  sleep 1
done
cat "$demo_dir/run.out"
grep -q "Ctrl-C stops everything" "$demo_dir/run.out"
curl -fsS -o /dev/null "http://127.0.0.1:8700/api/v1/status"
kill -INT "$demo_pid"
wait "$demo_pid"
echo "the demo stopped cleanly"

step "all tests passed"
