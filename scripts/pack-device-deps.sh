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
# Every -dev package the top-level CMakeLists.txt requires but PostgreSQL's libpq (device-check.sh
# configures with -DDIFFUSIOND_POSTGRES=OFF), and the runtime libraries they link.
packages=(libboost1.81-dev nlohmann-json3-dev libstb-dev catch2 libutf8proc-dev libsqlite3-dev
          libcli11-dev libspdlog-dev libfmt-dev libjpeg62-turbo-dev libwebp-dev zlib1g-dev
          libssl-dev
          libutf8proc2 libsqlite3-0 libspdlog1.10 libfmt9 libjpeg62-turbo libwebp7 libwebpmux3
          libwebpdemux2 libssl3 pkgconf-bin libpkgconf3 "$@")
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
# --dereference: a link to an absolute path (libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13)
# would point outside the unpacked tree there; the file itself goes in instead.
tar -C / --dereference -cJf "$out" -T "$files"
echo "$out: $(wc -l <"$files") files of ${#packages[@]} packages, $(du -h "$out" | cut -f1)"
