#!/usr/bin/env bash
# GPU check for a lent device machine (see ../shared/device/README.md): unpacks the carried
# Debian -dev packages, configures against the machine's PyTorch LibTorch (CUDA), builds, runs
# the GPU-tagged tests (label gpu) and the daemon unit tests, then bench_pipeline on cuda:0
# (fp16) and on the CPU (fp32), and prints a short table last. Logs go to OUT_DIR.
#
#   scripts/device-check.sh [OUT_DIR]      (default: $OUT, else /tmp/device-check)
# Pack the dependencies here first (the runtime .so packages too: the GPU machine has none):
#   echo /.devdeps/ >> .git/info/exclude; mkdir -p .devdeps
#   ../shared/device/pack-deps.sh .devdeps/deps.tar.xz zlib1g-dev libspdlog1.10 libfmt9 \
#       libutf8proc2 libsqlite3-0 pkgconf-bin libpkgconf3
# and carry .devdeps in the device run.
# Env: DEPS (default .devdeps/deps.tar.xz, made here by ../shared/device/pack-deps.sh),
#      BUILD_DIR (default build-gpu), JOBS (default: every core), MODEL (default: tiny-sd1).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:-/tmp/device-check}}
deps=${DEPS:-$root/.devdeps/deps.tar.xz}
build=${BUILD_DIR:-$root/build-gpu}
jobs=${JOBS:-$(nproc)}
model=${MODEL:-$root/tests/fixtures/tiny-sd1}
mkdir -p "$out"
declare -a rows=()
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }
run_step() {  # name logfile command...: records ok/FAILED and the elapsed seconds
  local name=$1 log=$2 start rc
  shift 2
  start=$(date +%s)
  "$@" >"$out/$log" 2>&1
  rc=$?
  row "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc, see $log)") $(($(date +%s) - start))s"
  return $rc
}
finish() {
  echo
  echo "==== device check ($(date -u +%FT%TZ)) ===="
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
    sed 's/^/gpu: /'
  printf '%s\n' "${rows[@]}"
  exit "${1:-0}"
}

mkdir -p /tmp/deps
run_step "unpack deps" unpack.log tar -xJf "$deps" -C /tmp/deps || finish 1
# The packed .pc files and libraries say /usr: point pkg-config and the loader at /tmp/deps.
libdir=/tmp/deps/usr/lib/x86_64-linux-gnu
export PKG_CONFIG_SYSROOT_DIR=/tmp/deps
export PKG_CONFIG_LIBDIR=$libdir/pkgconfig:/tmp/deps/usr/share/pkgconfig
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
pkg_config=()
if ! command -v pkg-config >/dev/null && [ -x /tmp/deps/usr/bin/pkgconf ]; then
  pkg_config=(-DPKG_CONFIG_EXECUTABLE=/tmp/deps/usr/bin/pkgconf)
fi
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || finish 1
torch_info=$(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda,
  "abi", int(torch._C._GLIBCXX_USE_CXX11_ABI), "gpus", torch.cuda.device_count())')
row "torch" "$torch_info"

run_step "configure" configure.log cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release "${pkg_config[@]}" \
  -DCMAKE_PREFIX_PATH="/tmp/deps/usr;$libdir/cmake;$torch_prefix" ||
  finish 1
targets=(diffusiond test_daemon)
for t in test_daemon_gpu test_pipeline bench_pipeline bench_serve; do
  if grep -q "^build $t:" "$build/build.ninja" 2>/dev/null ||
     ninja -C "$build" -t targets all 2>/dev/null | grep -q "^$t:"; then targets+=("$t"); fi
done
run_step "build (${targets[*]})" build.log cmake --build "$build" -j "$jobs" --target "${targets[@]}" ||
  finish 1

run_step "ctest -L gpu" ctest-gpu.log ctest --test-dir "$build" -L gpu --output-on-failure
run_step "ctest -L daemon" ctest-daemon.log ctest --test-dir "$build" -L daemon --output-on-failure

bench=$build/bench/pipeline/bench_pipeline
if [ -x "$bench" ]; then
  for spec in "cuda:0 fp16" "cuda:0 fp32" "cpu fp32"; do
    device=${spec% *} dtype=${spec#* }
    log="bench-${device/:/}-$dtype.log"
    if run_step "bench_pipeline $device $dtype 256px" "$log" "$bench" --model "$model" \
        --device "$device" --dtype "$dtype" --width 256 --height 256 --steps 20 --runs 3; then
      row "    all steps (last run)" "$(grep -F '| all steps' "$out/$log" | tail -1 | tr -s ' ')"
      row "    images/s (last run)" "$(grep -F '| images/s' "$out/$log" | tail -1 | tr -s ' ')"
    fi
  done
fi
bench_serve=$build/bench/serve/bench_serve
if [ -x "$bench_serve" ]; then
  run_step "bench_serve" bench-serve.log "$bench_serve" --model "$model" --devices cuda --images 64 --size 256
  while IFS= read -r line; do row "    serve" "$line"; done < <(tail -5 "$out/bench-serve.log")
fi
finish 0
