#!/usr/bin/env bash
# Builds everything and runs every test (unit, golden parity, black-box HTTP, systemd, browser).
# Usage: bash scripts/test.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
jobs=$(nproc)

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j"$jobs"
# Each test process uses a share of the cores, so tests running side by side don't oversubscribe.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ctest --test-dir "$build_dir" --output-on-failure -j"$jobs" --timeout 900
