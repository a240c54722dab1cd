#!/usr/bin/env bash
# Runs the real vend-vm under Xvfb after a few scripted actions and saves a
# PNG of the screen.
# Usage: scripts/screenshot-vm.sh OUT.png [WIDTHxHEIGHT] [SCRIPT] [VEND-VM ARGS...]
#   WIDTHxHEIGHT  the screen (default 1180x760; 800x480 is a small kiosk panel)
#   SCRIPT        vend-vm --script steps (default: a customer mid-purchase)
set -euo pipefail
out="$(realpath -m "${1:?usage: scripts/screenshot-vm.sh OUT.png [WIDTHxHEIGHT] [SCRIPT] [ARGS...]}")"
size="${2:-1180x760}"
script="${3:-admin:vend-admin-1!,refill:1,refill:2,refill:3,refill:4,refill:5,tubes,logout,insert:1000,buy:5,insert:500,buy:2,insert:100,insert:100,insert:50,insert:50,insert:10}"
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Xvfb and ImageMagick, the X11 client libraries winit loads at run time,
# and a font with Hangul (the machine speaks Korean).
need=()
for package in xvfb imagemagick libx11-6 libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon-x11-0 x11-utils fonts-noto-cjk; do
  have_package "$package" || need+=("$package")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "screenshot: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" || { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; }
fi

# The whole workspace, like every other build here: building single
# packages would resolve other features and rebuild RocksDB.
cargo build --locked --workspace
work="$(mktemp -d /tmp/vend-vm-shot-XXXXXX)"
# vend-vm makes no key of its own: provision the machine first.
$bin/vendctl keys machine --dir "$work/keys" --id VM-001 > /dev/null
display=":$((90 + RANDOM % 9))"
Xvfb "$display" -screen 0 "${size}x24" -nolisten tcp > "$work/xvfb.log" 2>&1 &
xvfb=$!
cleanup() { kill "${vm:-}" 2>/dev/null || true; kill "$xvfb" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do DISPLAY="$display" xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done

DISPLAY="$display" VEND_VM_WINDOW="$size" $bin/vend-vm \
  --machine-id VM-001 --data "$work/vm" --keys "$work/keys" \
  --admin-password 'vend-admin-1!' --script "$script" "$@" \
  > "$work/vm.log" 2>&1 &
vm=$!
# Wait (bounded) for the window to be mapped, then give it a moment to draw.
for _ in $(seq 100); do
  DISPLAY="$display" xwininfo -root -tree 2>/dev/null | grep -q 'vendledger' && break
  kill -0 "$vm" 2>/dev/null || { cat "$work/vm.log"; echo "vend-vm exited early" >&2; exit 1; }
  sleep 0.1
done
sleep 3
DISPLAY="$display" import -window root "$out"
echo "screenshot saved to $out"
