#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the daemon and its unit and black-box
# tests (gcc, -O1 -g, any undefined behaviour aborts), run under ctest; then, with TSAN=1, a
# ThreadSanitizer build of the torch-free daemon core tests (test_daemon) and the HTTP tests
# (test_http); .ci/run sets TSAN=1 (seen green: 170 tests).
#
#   bash scripts/sanitize.sh            (build dirs: build-asan, build-tsan)
# Env: JOBS (default: every core), SANITIZE_SCOPE (all | core, see below), TSAN=1 (also ThreadSanitizer), GOLDEN=1 (also build and run
#      the golden parity tests, label "golden"; off by default: see below), CTEST_ARGS (extra
#      ctest arguments, e.g. "-R test_http").
#
# What does not run here, and why:
#  - browser_e2e (label browser): Node driving Chromium, minutes more and none of it our code;
#    the daemon it drives is the binary the black-box tests drive here.
#  - test_daemon_gpu (label gpu): needs a CUDA device (skipped on CI machines anyway).
#  - golden parity tests (label golden; GOLDEN=1 adds them): their code paths (text encoder,
#    UNet, VAE, txt2img on the tiny model) run in the black-box tests through the daemon too;
#    they cost three more LibTorch precompiled headers and minutes of uninstrumented tensor
#    maths.
# LibTorch and OpenBLAS (Debian's, not instrumented) are linked by the daemon and the torch
# tests: LeakSanitizer ignores what they leak by scripts/sanitize/lsan.supp, every other leak
# fails the test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=${JOBS:-$(nproc)}
supp=$root/scripts/sanitize

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
targets=(diffusiond test_daemon test_http test_png test_tokenizer test_blackbox test_foundation
         test_weights test_schedulers)
exclude="browser|gpu|golden"
if [ "${GOLDEN:-0}" = 1 ]; then
  targets+=(test_text_encoder test_unet test_pipeline)
  exclude="browser|gpu"
fi
# The fuzz targets' corpus replays (label fuzz) build with the normal build.
targets+=(fuzz_replay_all)
# SANITIZE_SCOPE=core: only the torch-free tests (the daemon core with its fake backend, the HTTP
# server, the fuzz replays): what has been seen green so far; "all" (default) adds the daemon
# binary with LibTorch and the black-box tests that drive it.
if [ "${SANITIZE_SCOPE:-all}" = core ]; then
  targets=(test_daemon test_http fuzz_replay_all)
fi

t0=$(date +%s)
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DDIFFUSIOND_BUILD_BENCH=OFF
cmake --build build-asan -j"$jobs" --target "${targets[@]}"
t1=$(date +%s)

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:suppressions=$supp/asan.supp"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
# shellcheck disable=SC2086
ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 1800 -LE "$exclude" \
  -E "_NOT_BUILT" ${CTEST_ARGS:-}
t2=$(date +%s)
echo "sanitize: ASan+UBSan build $((t1 - t0)) s, tests $((t2 - t1)) s"

if [ "${TSAN:-0}" = 1 ]; then
  # ThreadSanitizer: only torch-free code (LibTorch and OpenBLAS are not instrumented, and TSan
  # cannot see their synchronisation): the daemon core with its fake backend, and the HTTP server.
  tflags="-fsanitize=thread -fno-omit-frame-pointer"
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_CXX_FLAGS="$tflags" -DCMAKE_C_FLAGS="$tflags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" -DDIFFUSIOND_BUILD_BENCH=OFF
  cmake --build build-tsan -j"$jobs" --target test_daemon test_http
  t3=$(date +%s)
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp"
  # shellcheck disable=SC2086
  ctest --test-dir build-tsan --output-on-failure -j"$jobs" --timeout 1800 -L "^(daemon|http)$" \
    -E "_NOT_BUILT" ${CTEST_ARGS:-}
  t4=$(date +%s)
  echo "sanitize: TSan build $((t3 - t2)) s, tests $((t4 - t3)) s"
fi
echo "sanitize: all passed in $(($(date +%s) - t0)) s"
