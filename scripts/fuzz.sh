#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang, -fsanitize=fuzzer,address,undefined; LibTorch is
# not needed) in build-fuzz and runs each for FUZZ_SECONDS over a scratch copy of its committed
# corpus (fuzz/corpus/<target>/ and fuzz/regressions/<target>/), so the tree stays clean. Fails
# when a target crashes, leaks, times out or runs out of memory, and prints the file that
# reproduces it (copy that file into fuzz/regressions/<target>/ to keep it: see fuzz/README.md).
#
#   bash scripts/fuzz.sh [TARGET ...]        (default: every target)
# Env: FUZZ_SECONDS (default 60, per target), FUZZ_JOBS (build jobs, default every core),
#      FUZZ_WORK (scratch dir, default a new one under /tmp; crash files are left there),
#      CXX/CC (default clang++/clang).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-$(nproc)}
all=(http_request request_validation tokenizer prompt_syntax safetensors_header png_chunks)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

t0=$(date +%s)
flags="-fsanitize=address,undefined -fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined"
flags+=" -fno-omit-frame-pointer -gline-tables-only"
cmake -S . -B build-fuzz -G Ninja -DDIFFUSIOND_FUZZ=ON -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_COMPILER="${CC:-clang}" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_CXX_FLAGS_RELEASE="-O1" -DCMAKE_C_FLAGS_RELEASE="-O1" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-fuzz -j"$jobs" --target "${targets[@]/#/fuzz_}"
t1=$(date +%s)
echo "fuzz: build $((t1 - t0)) s"

work=${FUZZ_WORK:-$(mktemp -d /tmp/diffusiond-fuzz.XXXXXX)}
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=()
for target in "${targets[@]}"; do
  corpus=$work/$target/corpus
  artifacts=$work/$target/artifacts/
  mkdir -p "$corpus" "$artifacts"
  cp -r fuzz/corpus/"$target"/. "$corpus"/
  seeds=("$corpus")
  [ -d fuzz/regressions/"$target" ] && seeds+=("fuzz/regressions/$target")
  dict=()
  [ -f fuzz/dict/"$target".dict ] && dict=(-dict=fuzz/dict/"$target".dict)
  echo "fuzz: $target for ${seconds}s ($(find "${seeds[@]}" -type f | wc -l) seed files)"
  log=$work/$target/fuzz.log
  if build-fuzz/fuzz/fuzz_"$target" "${seeds[@]}" "${dict[@]}" -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -max_len=65536 -artifact_prefix="$artifacts" \
      -print_final_stats=1 >"$log" 2>&1; then
    grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" |
      sed "s/^/fuzz: $target: /"
  else
    failed+=("$target")
    echo "fuzz: $target FAILED; the end of its log ($log):"
    tail -60 "$log"
    for file in "$artifacts"*; do
      [ -f "$file" ] || continue
      echo "fuzz: $target: reproduce with: build-fuzz/fuzz/fuzz_$target $file"
      echo "fuzz: $target: keep it:        cp $file fuzz/regressions/$target/"
      echo "fuzz: $target: its bytes (base64): $(head -c 4096 "$file" | base64 -w0)"
    done
  fi
done
echo "fuzz: ${#targets[@]} target(s) run in $(($(date +%s) - t0)) s (build $((t1 - t0)) s); work dir $work"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
[ -n "${FUZZ_WORK:-}" ] || rm -rf "$work"
