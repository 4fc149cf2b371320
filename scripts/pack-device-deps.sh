#!/usr/bin/env bash
# Packs the Debian packages a bare GPU machine lacks for building diffusiond (it has CUDA,
# PyTorch's LibTorch, CMake and ninja, but no -dev packages and no network) into one tarball that
# scripts/device-check.sh unpacks there. Files keep Debian's layout (usr/include, usr/lib/...), so
# the packed CMake and pkg-config files work under any prefix.
#
#   scripts/pack-device-deps.sh OUT.tar.xz [more Debian packages ...]
set -euo pipefail
out=${1:?usage: scripts/pack-device-deps.sh OUT.tar.xz [package ...]}
shift
packages=(libboost1.81-dev nlohmann-json3-dev libstb-dev catch2 libutf8proc-dev libsqlite3-dev
          libcli11-dev libspdlog-dev libfmt-dev libjpeg62-turbo-dev libwebp-dev "$@")
files=$(mktemp)
trap 'rm -f "$files"' EXIT
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 ||
    { echo "$package is not installed here: apt-get install it first" >&2; exit 2; }
  dpkg -L "$package" | while read -r path; do
    { [ -f "$path" ] || [ -L "$path" ]; } || continue
    case "$path" in /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/*) continue ;; esac
    echo "${path#/}"
  done
done | sort -u >"$files"
tar -C / -cJf "$out" -T "$files"
echo "$out: $(wc -l <"$files") files of ${#packages[@]} packages, $(du -h "$out" | cut -f1)"
