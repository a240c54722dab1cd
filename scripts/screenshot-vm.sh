#!/usr/bin/env bash
# Runs the real vend-vm under Xvfb after a few scripted purchases and saves
# a PNG of the screen. Usage: scripts/screenshot-vm.sh OUT.png
set -euo pipefail
out="$(realpath -m "${1:?usage: scripts/screenshot-vm.sh OUT.png}")"
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Xvfb and ImageMagick, and the X11 client libraries winit loads at run time.
need=()
for package in xvfb imagemagick libx11-6 libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon-x11-0 x11-utils; do
  have_package "$package" || need+=("$package")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "screenshot: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" || { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; }
fi

cargo build --locked -p vm-iced -p tools
work="$(mktemp -d /tmp/vend-vm-shot-XXXXXX)"
# vend-vm makes no key of its own: provision the machine first.
./target/debug/vendctl keys machine --dir "$work/keys" --id VM-001 > /dev/null
display=":$((90 + RANDOM % 9))"
Xvfb "$display" -screen 0 1180x760x24 -nolisten tcp > "$work/xvfb.log" 2>&1 &
xvfb=$!
cleanup() { kill "${vm:-}" 2>/dev/null || true; kill "$xvfb" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do DISPLAY="$display" xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done

DISPLAY="$display" ./target/debug/vend-vm \
  --machine-id VM-001 --data "$work/vm" --keys "$work/keys" \
  --admin-password 'vend-admin-1!' \
  --script 'admin:vend-admin-1!,refill:1,refill:2,refill:3,refill:4,refill:5,tubes,logout,insert:1000,buy:5,insert:500,buy:2,insert:100,insert:100,insert:50,insert:50,insert:10' \
  > "$work/vm.log" 2>&1 &
vm=$!
# Wait (bounded) for the window to be mapped, then give it a moment to draw.
for _ in $(seq 100); do
  DISPLAY="$display" xwininfo -root -tree 2>/dev/null | grep -q 'vendledger' && break
  kill -0 "$vm" 2>/dev/null || { cat "$work/vm.log"; echo "vend-vm exited early" >&2; exit 1; }
  sleep 0.1
done
sleep 2
DISPLAY="$display" import -window root "$out"
echo "screenshot saved to $out"
