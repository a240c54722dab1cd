#!/usr/bin/env bash
# Renders the vend-vm screens shown in docs/screens/ (replacing the PNGs
# there) at the small kiosk panel (800x480) and the default window
# (1180x760), plus the customer screen on a portrait panel (1080x1920).
# Usage: scripts/docs-screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/screens
mkdir -p "$out"
fill='admin:vend-admin-1!,refill,tubes,logout'
login='admin-open,admin-login:vend-admin-1!,admin-submit'
sold='insert:1000,buy:1,change,insert:500,buy:2,change'
# A customer with 560 won in; slot 6 was not filled (sold out).
customer='admin:vend-admin-1!,refill:1,refill:2,refill:3,refill:4,refill:5,tubes,logout,insert:1000,buy:5,insert:500,buy:2,insert:100,insert:100,insert:50,insert:50,insert:10'

shot() { # NAME SIZE SCRIPT [ARGS...]
  local name="$1" size="$2" script="$3"
  shift 3
  bash scripts/screenshot-vm.sh "$out/$name-$size.png" "$size" "$script" "$@" > /dev/null
  echo "$out/$name-$size.png"
}

for size in 800x480 1180x760; do
  shot customer "$size" "$customer"
  # A new machine: nothing to sell, money refused.
  shot out-of-service "$size" 'insert:100'
  # The changer jams on the 500 tube while paying 550 won change.
  shot ticket "$size" "$fill,insert:1000,buy:1,jam:500"
  # A new machine's operator: "Fill all slots" (and "Load all tubes" on
  # the cash tab) in one press each.
  shot admin-stock "$size" "$login,admin-tab:stock"
  # Counted 100 won less than expected, recorded after the confirmation.
  shot admin-cash "$size" "$fill,$sold,$login,admin-tab:cash,counted:1400,collect,confirm"
  shot admin-reports "$size" "$fill,$sold,$login,admin-tab:reports"
done
shot customer 1080x1920 "$customer"
shot customer-english 800x480 "$customer" --language en
# Replicas configured but none answers: the light says why and since when.
shot customer-offline 800x480 "$customer" --replica 127.0.0.1:9
