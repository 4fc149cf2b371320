#!/usr/bin/env bash
# The configuration reference stays true: every long option that `diffusiond serve --help` lists
# (but --help/--config themselves) appears as a `key = ...` line in systemd/diffusiond.conf.example,
# and every key there is an option --help knows.
# usage: config_reference_check.sh DIFFUSIOND_BINARY EXAMPLE_CONFIG
set -euo pipefail
bin=$1
example=$2
help=$("$bin" serve --help)
options=$(grep -oE -- '--[a-z][a-z0-9-]+' <<<"$help" | sed 's/^--//' | sort -u | grep -vxE 'help|config|version' || true)
keys=$(grep -oE '^#? ?[a-z][a-z0-9-]+ =' "$example" | sed -E 's/^#? ?//; s/ =$//' | sort -u)
[ -n "$options" ] || { echo "FAIL: no options parsed from serve --help"; exit 1; }
status=0
for o in $options; do
  grep -qx -- "$o" <<<"$keys" || { echo "FAIL: option --$o is missing from $example"; status=1; }
done
for k in $keys; do
  grep -qx -- "$k" <<<"$options" || { echo "FAIL: $example names '$k', which serve --help does not list"; status=1; }
done
[ $status -eq 0 ] && echo "ok: $(wc -w <<<"$options") options documented in $example"
exit $status
