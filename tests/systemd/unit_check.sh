#!/usr/bin/env bash
# Checks systemd/diffusiond.service.in rendered with the built binary:
#   unit_check.sh verify   TEMPLATE BINARY   -> `systemd-analyze verify` passes, no warnings
#   unit_check.sh security TEMPLATE BINARY   -> prints the exposure; fails above $MAX_EXPOSURE
set -euo pipefail
mode=$1 template=$2 binary=$3
max_exposure=${MAX_EXPOSURE:-2.5}

[ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unit=$work/diffusiond.service
sed -e "s#@DIFFUSIOND_BINARY@#$binary#g" -e "s#@DIFFUSIOND_CONFIG_DIR@#/etc/diffusiond#g" \
  "$template" >"$unit"
if grep -n '@[A-Z_]*@' "$unit"; then echo "unsubstituted placeholders in $unit" >&2; exit 1; fi

case $mode in
verify)
  # verify prints problems on stderr but does not always fail on them: treat any output as failure.
  out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$unit" 2>&1) || {
    echo "$out" >&2; echo "systemd-analyze verify failed" >&2; exit 1; }
  if [ -n "$out" ]; then echo "$out" >&2; echo "systemd-analyze verify complained" >&2; exit 1; fi
  echo "systemd-analyze verify: $unit OK"
  grep '^ExecStart=' "$unit"
  ;;
security)
  out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
  echo "$out" | grep -v '^✓' || true
  line=$(echo "$out" | grep -E 'Overall exposure level for diffusiond.service: [0-9.]+' || true)
  [ -n "$line" ] || { echo "no exposure level in systemd-analyze output" >&2; exit 1; }
  exposure=$(echo "$line" | sed -E 's/.*: ([0-9.]+).*/\1/')
  echo "exposure: $exposure (limit $max_exposure)"
  awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' || {
    echo "exposure $exposure is above $max_exposure" >&2; exit 1; }
  ;;
*)
  echo "usage: $0 verify|security TEMPLATE BINARY" >&2; exit 2 ;;
esac
