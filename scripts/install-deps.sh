#!/usr/bin/env bash
# Installs every Debian 12 package that diffusiond's build, tests and browser tests need.
# Idempotent and non-interactive. Run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates
  libtorch-dev libopenblas0-pthread
  libboost1.81-dev
  nlohmann-json3-dev libstb-dev catch2 libutf8proc-dev zlib1g-dev
  libjpeg62-turbo-dev libwebp-dev  # JPEG and WebP output (pipeline/media)
  libsqlite3-dev sqlite3 libsystemd-dev libcli11-dev libspdlog-dev libfmt-dev libssl-dev
  python3 curl procps systemd
  libpq-dev postgresql  # --store postgresql://... (libpq) and its tests (initdb, pg_ctl)
  clang libclang-rt-14-dev  # scripts/fuzz.sh: clang 14 and libFuzzer (libclang_rt.fuzzer)
  chromium
)
# Node.js + npm drive the browser test (playwright-core). Machines of this kind ship Node 20
# from NodeSource; only fall back to Debian's packages when there is no node at all.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"

# Debian's LibTorch calls BLAS through libblas.so.3; make sure OpenBLAS (pthreads) serves it,
# not the reference BLAS.
if command -v update-alternatives >/dev/null; then
  for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
    target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-pthread | head -1 || true)
    if [ -n "$target" ]; then $SUDO update-alternatives --set "$alt" "$target" >/dev/null; fi
  done
fi
