#!/usr/bin/env bash
# Builds diffusiond (CMake, Release, in ./build) and starts `diffusiond serve`, which prints the
# URL it listens on (default http://127.0.0.1:7860). Extra arguments go to `diffusiond serve`
# (see `build/daemon/diffusiond serve --help`), e.g.:
#   scripts/run.sh --model /path/to/stable-diffusion-v1-5 --devices cpu*2 --listen 127.0.0.1:8080
# Model: --model, else $DIFFUSIOND_MODEL, else a Stable Diffusion 1.5 in the Hugging Face cache,
# else the bundled test model tests/fixtures/tiny-sd1 (random weights: its images are noise; the
# daemon says so loudly and tells how to point it at a real model).
# Env: BUILD_DIR (default ./build), JOBS (default: every core).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}

if [ ! -f "$build/CMakeCache.txt" ]; then
  generator=()
  if command -v ninja >/dev/null; then generator=(-G Ninja); fi
  cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build" --target diffusiond -j "$jobs"

# The daemon finds the bundled model through the source tree it was built from.
export DIFFUSIOND_SOURCE_DIR=${DIFFUSIOND_SOURCE_DIR:-$root}
exec "$build/daemon/diffusiond" serve "$@"
