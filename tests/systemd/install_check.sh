#!/usr/bin/env bash
# `cmake --install` into a scratch DESTDIR puts the binary, the unit (running the installed
# binary with the installed config), the example config and a first config in place; a second
# install keeps the administrator's config. The installed unit passes `systemd-analyze verify`.
# usage: install_check.sh BUILD_DIR BINDIR UNITDIR CONFIG_DIR DOCDIR   (absolute install paths)
set -euo pipefail
build=$1 bindir=$2 unitdir=$3 confdir=$4 docdir=$5
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

DESTDIR=$root cmake --install "$build" >"$root.log" 2>&1 || { cat "$root.log"; fail "cmake --install"; }
rm -f "$root.log"
for f in "$bindir/diffusiond" "$unitdir/diffusiond.service" "$confdir/diffusiond.conf.example" \
         "$confdir/diffusiond.conf" "$docdir/diffusiond.conf.example"; do
  [ -f "$root$f" ] || fail "not installed: $f"
  echo "installed: $f"
done
[ -x "$root$bindir/diffusiond" ] || fail "$bindir/diffusiond is not executable"

unit=$root$unitdir/diffusiond.service
want="ExecStart=$bindir/diffusiond serve --config $confdir/diffusiond.conf"
grep -qxF "$want" "$unit" || fail "unit lacks '$want': $(grep ExecStart "$unit")"
if grep -n '@[A-Z_]*@' "$unit"; then fail "unsubstituted placeholders in the installed unit"; fi

# The installed unit verifies, its ExecStart pointed at the binary inside DESTDIR.
check=$(mktemp -d)
sed "s#^ExecStart=$bindir/#ExecStart=$root$bindir/#" "$unit" >"$check/diffusiond.service"
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$check/diffusiond.service" 2>&1) \
  || { echo "$out"; rm -rf "$check"; fail "systemd-analyze verify of the installed unit"; }
rm -rf "$check"
[ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify complained about the installed unit"; }

# A second install never overwrites an edited config.
echo "# edited by the administrator" >>"$root$confdir/diffusiond.conf"
DESTDIR=$root cmake --install "$build" >/dev/null 2>&1 || fail "second cmake --install"
grep -q "edited by the administrator" "$root$confdir/diffusiond.conf" || fail "config overwritten"
echo "PASS"
