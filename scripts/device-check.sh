#!/usr/bin/env bash
# GPU check for a bare GPU machine (CUDA and PyTorch, no network), in one run of a few
# minutes: unpacks the carried Debian -dev packages, configures against the machine's PyTorch
# LibTorch (CUDA), builds (ninja -k 0: every compile error at once; if the CUDA graph file
# pipeline/cuda_graph_step.cpp does not compile, it says so and builds again with
# -DDIFFUSIOND_CUDA_GRAPHS=OFF), runs the GPU-tagged tests, then issue 11's measurements on the
# SD 1.5 architecture with random weights, 512x512, fp16, 20 steps: the step time at batch
# 1/2/4/8 eager vs CUDA graphs (one process, bench_pipeline --batch 1,2,4,8 --cuda-graphs both),
# bench_serve with 1, 4 and 16 clients, batching off and on, each against the in-process
# pipeline at the same batch (daemon / in-process), channels_last on/off and cudnn.benchmark
# on/off (batch 1 and 4), diffusers' UNet eager on the card if this Python has diffusers (else a
# note);
# issue 12's figures: the SDXL architecture (random weights) at 1024x1024, 30 steps, fp16,
# batch 1, and images/s with 4 clients; SDXL-Turbo (the same weights, its own scheduler) at
# 512x512, 1 step, no guidance, batch 1 and 4, and 4 clients;
# then the tiny model and the golden CPU tests if budget is left. Prints a short table last.
# Logs: one tarball and summary.txt in OUT_DIR (the device tool brings back at most 8 files).
#
#   scripts/device-check.sh [OUT_DIR]      (default: $OUT, else /tmp/device-check)
# Pack the dependencies here first (the runtime .so packages too: the GPU machine has none; its
# build leaves the PostgreSQL store out, -DDIFFUSIOND_POSTGRES=OFF, so libpq is not needed):
#   echo /.devdeps/ >> .git/info/exclude; mkdir -p .devdeps
#   scripts/pack-device-deps.sh .devdeps/deps.tar.xz
# and carry .devdeps in the device run. What travels is at most 64 MiB and the fixtures alone
# are 59: `scripts/device-tree.sh slim` before the run (the SDXL and single-file fixtures stay
# behind; the golden group is then skipped), `scripts/device-tree.sh restore` right after.
# Env: DEPS (default .devdeps/deps.tar.xz), BUILD_DIR (default build-gpu), JOBS (default: every
#      core), BUDGET_S (default 530: no step runs past it, later ones are skipped, and the
#      table's last rows give the CHECKS of a second call for the groups left out), SKIP_SD15=1,
#      TARGETS (what to build; steps whose programs were not built are skipped),
#      CHECKS (default "tests sd15 sdxl serve tuning diffusers tiny golden": which groups run,
#      in that order; e.g. a second call on the still-warm machine with CHECKS="sd15 serve"
#      reuses the build and the random model folders in /tmp and only measures),
#      CUDA_GRAPHS=OFF (build without the graph code from the start),
#      DIFFUSERS_PYTHONPATH (carried diffusers sources for the diffusers row, as
#      ../shared/reference/setup.sh lays them out).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:-/tmp/device-check}}
deps=${DEPS:-$root/.devdeps/deps.tar.xz}
build=${BUILD_DIR:-$root/build-gpu}
jobs=${JOBS:-$(nproc)}
budget=${BUDGET_S:-530}
tiny=$root/tests/fixtures/tiny-sd1
logs=$(mktemp -d /tmp/device-check-logs.XXXX)
t0=$(date +%s)
mkdir -p "$out"
declare -a rows=()
row() {
  rows+=("$(printf '%-40s %s' "$1" "$2")")
  echo "${rows[-1]}"
}
elapsed() { echo $(($(date +%s) - t0)); }
checks=" ${CHECKS:-tests sd15 sdxl serve tuning diffusers tiny golden} "
group=""            # the check group now running (set by want)
skipped_groups=" "  # groups with a step the budget left out: what a second call should run
want() {
  group=$1
  [[ "$checks" == *" $1 "* ]]
}
run_step() {  # name logfile timeout_s command...: records ok/FAILED/skipped and the seconds
  local name=$1 log=$2 limit=$3 start rc left
  shift 3
  left=$((budget - $(elapsed)))
  if [ "$left" -lt 15 ]; then
    row "$name" "skipped (budget of ${budget}s spent)"
    [ -n "$group" ] && [[ "$skipped_groups" != *" $group "* ]] && skipped_groups+="$group "
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  start=$(date +%s)
  timeout "$limit" "$@" >"$logs/$log" 2>&1
  rc=$?
  row "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc, $log)") $(($(date +%s) - start))s"
  return $rc
}
finish() {
  if [ "$skipped_groups" != " " ]; then
    row "NOT RUN (budget)" "again at once on the warm machine, reusing the build and /tmp's models:"
    row "" "CHECKS=\"$(echo $skipped_groups)\" bash scripts/device-check.sh \"\$OUT\""
  fi
  tar -czf "$out/device-check-logs.tar.gz" -C "$logs" . 2>/dev/null
  {
    echo
    echo "==== device check ($(date -u +%FT%TZ), $(elapsed)s) ===="
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
      sed 's/^/gpu: /'
    printf '%s\n' "${rows[@]}"
  } | tee "$out/summary.txt"
  exit "${1:-0}"
}
bench_rows() {  # logfile: the headline lines of a bench_pipeline log
  local what
  for what in "mean step" "all steps" "VAE decode" "throughput"; do
    row "    $what (last run)" "$(grep -F "| $what" "$logs/$1" | tail -1 | tr -s ' ')"
  done
}

mkdir -p /tmp/deps
run_step "unpack deps" unpack.log 120 tar -xJf "$deps" -C /tmp/deps || finish 1
# The packed .pc files and libraries say /usr: point pkg-config and the loader at /tmp/deps.
libdir=/tmp/deps/usr/lib/x86_64-linux-gnu
export PKG_CONFIG_SYSROOT_DIR=/tmp/deps
export PKG_CONFIG_LIBDIR=$libdir/pkgconfig:/tmp/deps/usr/share/pkgconfig
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
pkg_config=()
if ! command -v pkg-config >/dev/null && [ -x /tmp/deps/usr/bin/pkgconf ]; then
  pkg_config=(-DPKG_CONFIG_EXECUTABLE=/tmp/deps/usr/bin/pkgconf)
fi
torch_prefix=${TORCH_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')} ||
  finish 1
row "torch" "$(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda,
  "abi", int(torch._C._GLIBCXX_USE_CXX11_ABI), "gpus", torch.cuda.device_count())' 2>&1)"
row "compiler" "$(c++ --version | head -1)"

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
configure() {  # extra cmake -D options
  run_step "configure${1:+ ($*)}" configure.log 180 cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release "${pkg_config[@]}" -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DDIFFUSIOND_POSTGRES=OFF \
    -DCMAKE_PREFIX_PATH="/tmp/deps/usr;$libdir/cmake;$torch_prefix" "$@"
}
graphs_flag=()
[ "${CUDA_GRAPHS:-ON}" = OFF ] && graphs_flag=(-DDIFFUSIOND_CUDA_GRAPHS=OFF)
configure "${graphs_flag[@]}" || { tail -40 "$logs/configure.log"; finish 1; }
row "    cuda graphs (cmake)" "$(grep -o 'CUDA graphs for the denoising step: .*' "$logs/configure.log" | tail -1)"
read -r -a targets <<<"${TARGETS:-diffusiond test_daemon_gpu test_daemon test_step_graphs \
  test_text_encoder test_unet test_pipeline bench_pipeline bench_serve}"
if ! run_step "build (${#targets[@]} targets)" build.log 420 \
    cmake --build "$build" -j "$jobs" --target "${targets[@]}" -- -k 0; then
  echo "---- build errors ----"
  grep -E -m 60 -A3 'error:|Error |undefined reference' "$logs/build.log"
  # The CUDA graph code has never been compiled before this machine: if it is what failed,
  # record it and build everything else with the graphs off (the eager path).
  if grep -q 'FAILED: .*cuda_graph_step' "$logs/build.log" && [ ${#graphs_flag[@]} -eq 0 ]; then
    cp "$logs/build.log" "$logs/build-graphs-failed.log"
    row "CUDA GRAPHS" "FAILED TO COMPILE (build-graphs-failed.log): rebuilding with them OFF"
    configure -DDIFFUSIOND_CUDA_GRAPHS=OFF || finish 1
    run_step "build, CUDA graphs OFF" build.log 300 \
      cmake --build "$build" -j "$jobs" --target "${targets[@]}" -- -k 0 ||
      grep -E -m 40 -A3 'error:|Error |undefined reference' "$logs/build.log"
  fi
fi

bin=$build/daemon/diffusiond
bench=$build/bench/pipeline/bench_pipeline
bench_serve=$build/bench/serve/bench_serve
export DIFFUSIOND_BIN=$bin
if want tests && [ -x "$build/tests/daemon/test_daemon_gpu" ]; then
  run_step "GPU tests (test_daemon_gpu)" gpu-tests.log 300 \
    "$build/tests/daemon/test_daemon_gpu" --durations yes
  grep -E "vs diffusers|mean \|gpu|FAILED|failed|passed|graph" "$logs/gpu-tests.log" | head -16
fi
if want tests && [ -x "$build/tests/pipeline/test_step_graphs" ]; then
  run_step "graph cache tests (CPU, this LibTorch)" step-graphs.log 60 \
    env OMP_NUM_THREADS=4 "$build/tests/pipeline/test_step_graphs"
fi
sd15=/tmp/sd15-random
serve_rows() {  # logfile: bench_serve's headline lines
  while IFS= read -r line; do row "    serve" "$line"; done < <(grep -E '^\| (throughput|submit|end-to-end|time per)|^throughput daemon' "$logs/$1")
}
# Issue 11's GPU measurements, SD 1.5 architecture, 512x512, fp16, 20 steps. One process per
# weight layout: the step time at batch 1/2/4/8 (--mixed: different requests in one
# generate_batch, per-row guidance), eager then CUDA graphs on the same loaded model; then
# bench_serve with 1, 4 and 16 clients, batching off (--max-batch 1) and on (4), each against
# the in-process pipeline at the same batch (daemon / in-process); then channels_last and
# cudnn.benchmark (each its own process: both are set at load).
sweep_rows() {  # logfile: bench_pipeline's "sweep |" lines
  while IFS= read -r line; do row "    " "${line#sweep | }"; done < <(grep -E '^sweep \|' "$logs/$1")
}
sd15_args=(--model "$sd15" --device cuda:0 --dtype fp16 --width 512 --height 512 --steps 20 --mixed)
have_sd15() {
  [ "${SKIP_SD15:-0}" != 1 ] && [ -x "$bin" ] && [ -x "$bench" ] &&
    { [ -d "$sd15" ] || run_step "make-random-model sd15 (fp16)" make-sd15.log 240 "$bin" make-random-model --arch sd15 --dtype fp16 --out "$sd15"; }
}
if want sd15 && have_sd15; then
  run_step "bench_pipeline sd15 b1,2,4,8 eager+graphs" bench-sd15-sweep.log 200 "$bench" \
    "${sd15_args[@]}" --batch 1,2,4,8 --cuda-graphs both --runs 2
  sweep_rows bench-sd15-sweep.log
fi
# Issue 12's GPU figures: SDXL (random weights stored in fp16, 6.9 GB), 1024x1024, 30 steps, its
# Euler and guidance 5.0 (a CFG batch of 2): seconds per image at batch 1, images/s with 4
# clients; SDXL-Turbo (links to the same weights, EulerAncestral on trailing timesteps, the
# family's guidance 0) at 512x512, 1 step.
sdxl=/tmp/sdxl-random
sdxl_turbo=/tmp/sdxl-turbo-random
have_sdxl() {
  [ -x "$bin" ] && [ -x "$bench" ] &&
    { [ -d "$sdxl" ] || run_step "make-random-model sdxl (fp16)" make-sdxl.log 240 "$bin" make-random-model --arch sdxl --dtype fp16 --out "$sdxl"; } &&
    { [ -d "$sdxl_turbo" ] || run_step "make-random-model sdxl-turbo (linked)" make-sdxl-turbo.log 60 "$bin" make-random-model --arch sdxl-turbo --weights-from "$sdxl" --out "$sdxl_turbo"; }
}
if want sdxl && have_sdxl; then
  run_step "bench_pipeline sdxl 1024px 30st b1" bench-sdxl.log 180 "$bench" --model "$sdxl" \
    --device cuda:0 --dtype fp16 --width 1024 --height 1024 --steps 30 --batch 1 --runs 2 &&
    bench_rows bench-sdxl.log
  run_step "bench_pipeline sdxl-turbo 512px 1st b1,4" bench-sdxl-turbo.log 120 "$bench" \
    --model "$sdxl_turbo" --device cuda:0 --dtype fp16 --width 512 --height 512 --steps 1 \
    --batch 1,4 --runs 3 && sweep_rows bench-sdxl-turbo.log
  if [ -x "$bench_serve" ]; then
    run_step "bench_serve sdxl 1024px 30st 4c" bench-serve-sdxl.log 180 "$bench_serve" \
      --model "$sdxl" --devices cuda --images 8 --clients 4 --size 1024 --steps 30 \
      --scheduler "" && serve_rows bench-serve-sdxl.log
    run_step "bench_serve sdxl-turbo 512px 1st 4c" bench-serve-sdxl-turbo.log 120 "$bench_serve" \
      --model "$sdxl_turbo" --devices cuda --images 32 --clients 4 --size 512 --steps 1 \
      --scheduler "" && serve_rows bench-serve-sdxl-turbo.log
  fi
fi
if want serve && have_sd15 && [ -x "$bench_serve" ]; then
  # c1: nothing to batch, one run; images sized so each run stays well under a minute.
  for spec in "1 1 6" "4 1 12" "4 4 12" "16 1 16" "16 4 16"; do
    read -r clients max_batch images <<<"$spec"
    run_step "bench_serve sd15 512px ${clients}c batch<=$max_batch" "bench-serve-sd15-c$clients-b$max_batch.log" 120 \
      "$bench_serve" --model "$sd15" --devices cuda --images "$images" --clients "$clients" \
      --size 512 --steps 20 --max-batch "$max_batch" &&
      serve_rows "bench-serve-sd15-c$clients-b$max_batch.log"
  done
fi
if want tuning && have_sd15; then
  for tune in "--channels-last on" "--cudnn-benchmark on"; do
    read -r -a tune_args <<<"$tune"
    run_step "bench_pipeline sd15 b1,4 ${tune_args[0]#--} on" "bench-sd15-${tune_args[0]#--}.log" 120 \
      "$bench" "${sd15_args[@]}" --batch 1,4 --cuda-graphs both --runs 2 "${tune_args[@]}"
    sweep_rows "bench-sd15-${tune_args[0]#--}.log"
  done
fi
# diffusers' own UNet, eager (its default SDPA attention), on the same weights and card.
if want diffusers && [ -d "$sd15" ]; then
  if PYTHONPATH=${DIFFUSERS_PYTHONPATH:-} python3 -c 'import diffusers' 2>/dev/null; then
    run_step "diffusers UNet eager sd15 512px fp16" diffusers.log 150 env \
      PYTHONPATH="${DIFFUSERS_PYTHONPATH:-}" HF_HUB_OFFLINE=1 python3 "$root/scripts/diffusers_gpu_step.py" \
      --model "$sd15" --size 512 --batches 1,4 &&
      while IFS= read -r line; do row "    " "$line"; done < <(grep -E '^diffusers \|' "$logs/diffusers.log")
  else
    row "diffusers UNet eager" "skipped: this Python has no diffusers (set DIFFUSERS_PYTHONPATH to carried sources)"
  fi
fi
if want tiny && [ -x "$bench" ]; then
  for dtype in fp16 fp32; do
    run_step "bench_pipeline tiny cuda:0 $dtype 256px 20st" "bench-tiny-$dtype.log" 120 "$bench" \
      --model "$tiny" --device cuda:0 --dtype "$dtype" --width 256 --height 256 --steps 20 \
      --runs 3 && bench_rows "bench-tiny-$dtype.log"
  done
fi
if want tiny && [ -x "$bench_serve" ]; then
  run_step "bench_serve tiny cuda 256px" bench-serve-tiny.log 150 "$bench_serve" --model "$tiny" \
    --devices cuda --images 64 --clients 8 --size 256 --steps 20
  serve_rows bench-serve-tiny.log
fi
# The golden tests on this LibTorch's CPU kernels (2.x: the fused attention path); they need every
# fixture, which a slimmed tree (scripts/device-tree.sh) leaves behind.
if want golden && [ ! -d "$root/tests/fixtures/tiny-sdxl" ]; then
  row "golden tests" "skipped: tests/fixtures/tiny-sdxl not carried (scripts/device-tree.sh slim)"
  checks=${checks/ golden / }
fi
for t in text_encoder/test_text_encoder unet/test_unet pipeline/test_pipeline daemon/test_daemon; do
  want golden && [ -x "$build/tests/$t" ] &&
    run_step "$(basename "$t") (CPU, this LibTorch)" "$(basename "$t").log" 240 \
      env OMP_NUM_THREADS=4 "$build/tests/$t"
done
finish 0
