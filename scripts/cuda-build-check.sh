#!/usr/bin/env bash
# Builds diffusiond against a CUDA LibTorch 2.x on a machine without a GPU, so that the code only
# a CUDA build compiles (pipeline/cuda_graph_step.cpp, the LibTorch 2.x branches) is compiled and
# linked before a GPU machine's scarce minutes are spent on it; then runs the CPU tests on that
# build (its CPU kernels: LibTorch 2.x's, the fused attention path among them).
# How: a Debian 13 (trixie) chroot from Debian's own mirror with trixie's libtorch-cuda-dev
# (LibTorch 2.6, CUDA 12.4) and nvidia-cuda-toolkit. Debian ships no cuDNN (its nvidia-cudnn
# package downloads it from NVIDIA at install time): an empty stand-in package provides
# libcudnn.so.9 (every symbol LibTorch binds, each a failing stub; links with
# -Wl,--allow-shlib-undefined); no cuDNN function runs without a GPU.
# Catch2: trixie has 3.x, the tests use 2.x, so the host's (Debian 12) headers are copied in.
# Needs root and debootstrap (apt-get install debootstrap); about 17 GB of disk; the first run
# takes ~25 min on 2 cores (packages ~5 min, build ~17, tests ~4), later runs rebuild what
# changed.
#
#   sudo scripts/cuda-build-check.sh [build|test|all]   (default all)
# Env: ROOT (the chroot, default /var/tmp/diffusiond-trixie), JOBS (default: the cores),
#      TESTS (ctest -R regex, default: every test).
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${ROOT:-/var/tmp/diffusiond-trixie}
what=${1:-all}
jobs=${JOBS:-$(nproc)}
mirror=http://deb.debian.org/debian

if [ ! -x "$root/usr/bin/apt-get" ]; then
  debootstrap --variant=minbase --components=main,contrib,non-free,non-free-firmware trixie \
    "$root" "$mirror"
fi
echo "deb $mirror trixie main contrib non-free non-free-firmware" >"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
for m in proc sys dev dev/pts; do
  mountpoint -q "$root/$m" && continue
  case $m in
    proc) mount -t proc proc "$root/proc" ;;
    sys) mount -t sysfs sys "$root/sys" ;;
    *) mount --bind "/$m" "$root/$m" ;;
  esac
done
trap 'for m in dev/pts dev sys proc; do umount "$root/$m" 2>/dev/null || true; done' EXIT
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  DEBIAN_FRONTEND=noninteractive "$@"; }

if [ ! -e "$root/usr/lib/x86_64-linux-gnu/cmake/Torch/TorchConfig.cmake" ]; then
  # The stand-in for cuDNN (see above).
  pkg=$(mktemp -d)
  mkdir -p "$pkg/DEBIAN" "$pkg/usr/lib/x86_64-linux-gnu"
  printf '%s\n' 'Package: nvidia-cudnn' 'Version: 9.0.0.312~cuda12' 'Architecture: amd64' \
    'Maintainer: diffusiond <noreply@localhost>' \
    'Provides: libcudnn-dev, libcudnn.so, libcudnn.so.9' \
    'Description: empty stand-in for cuDNN (diffusiond build check, no GPU)' >"$pkg/DEBIAN/control"
  echo 'void diffusiond_cudnn_stand_in(void) {}' >"$pkg/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$pkg/usr/lib/x86_64-linux-gnu/libcudnn.so.9" \
    "$pkg/stub.c"
  rm "$pkg/stub.c"
  ln -sf libcudnn.so.9 "$pkg/usr/lib/x86_64-linux-gnu/libcudnn.so"
  dpkg-deb --build "$pkg" "$root/tmp/nvidia-cudnn-stand-in.deb" >/dev/null
  rm -rf "$pkg"
  in_root apt-get update -q
  in_root dpkg -i /tmp/nvidia-cudnn-stand-in.deb
  in_root apt-get install -y -q --no-install-recommends libtorch-cuda-dev nvidia-cuda-toolkit \
    build-essential cmake ninja-build pkg-config git ca-certificates libboost-dev \
    nlohmann-json3-dev libstb-dev libutf8proc-dev zlib1g-dev libjpeg62-turbo-dev libwebp-dev \
    libsqlite3-dev sqlite3 libsystemd-dev libcli11-dev libspdlog-dev libfmt-dev libssl-dev \
    libpq-dev postgresql python3 curl procps libopenblas0-pthread
  # Now that LibTorch is there: the stand-in gets every cudnn* symbol libtorch_cuda binds
  # (versioned libcudnn.so.9, as the real library), so that the loader can bind them all when
  # a program starts; each returns 1 (CUDNN_STATUS_NOT_INITIALIZED), cudnnGetVersion 90100.
  # None is called without a GPU.
  cat >"$root/tmp/cudnn-stand-in.sh" <<'STUB'
set -euo pipefail
lib=/usr/lib/x86_64-linux-gnu
syms=$(objdump -T $lib/libtorch_cuda.so.* |
  awk 'NF >= 2 && $(NF-1) == "(libcudnn.so.9)" {print $NF}' | sort -u)
d=$(mktemp -d)
for s in $syms; do
  if [ "$s" = cudnnGetVersion ]; then echo "unsigned long $s(void) { return 90100; }"
  else echo "int $s(void) { return 1; }"; fi
done >$d/stub.c
{ echo 'libcudnn.so.9 { global:'; printf '  %s;\n' $syms; echo 'local: *; };'; } >$d/stub.map
gcc -shared -fPIC -fno-builtin -Wl,-soname,libcudnn.so.9 -Wl,--version-script=$d/stub.map \
  -o $lib/libcudnn.so.9 $d/stub.c
rm -rf $d
echo "cuDNN stand-in: $(echo $syms | wc -w) symbols"
STUB
  in_root bash /tmp/cudnn-stand-in.sh
fi
if [ ! -e "$root/usr/local/lib/cmake/Catch2/Catch2Config.cmake" ]; then
  [ -e /usr/include/catch2/catch.hpp ] || { echo "the host has no Catch2 2.x (apt-get install catch2)"; exit 1; }
  mkdir -p "$root/usr/local/include" "$root/usr/local/lib/cmake"
  cp -a /usr/include/catch2 "$root/usr/local/include/"
  cp -a /usr/lib/cmake/Catch2 "$root/usr/local/lib/cmake/"
  cp /usr/lib/libCatch2WithMain.a "$root/usr/local/lib/" 2>/dev/null || true
  sed -i 's#"/usr/lib/cmake/Catch2"#"/usr/local/lib/cmake/Catch2"#g' \
    "$root/usr/local/lib/cmake/Catch2/Catch2Targets.cmake"
fi

# The working tree (tracked files and untracked, unignored ones) into /src. Only files whose
# content changed are written (and so get a new mtime): the build there stays incremental and
# never misses an edit older than its last build.
stage=$(mktemp -d)
(cd "$src" && git ls-files -co --exclude-standard -z | tar -cf - --null --ignore-failed-read -T -) |
  tar -xf - -C "$stage"
(cd "$stage" && find . \( -type f -o -type l \) -print0) | while IFS= read -r -d '' f; do
  if [ -L "$stage/$f" ]; then  # the tree's symbolic links (models/configs/*/tokenizer) as links
    if [ "$(readlink "$stage/$f")" != "$(readlink "$root/src/$f" 2>/dev/null)" ]; then
      mkdir -p "$(dirname "$root/src/$f")"
      rm -f "$root/src/$f"
      cp -P "$stage/$f" "$root/src/$f"
    fi
  elif [ -L "$root/src/$f" ] || ! cmp -s "$stage/$f" "$root/src/$f"; then
    mkdir -p "$(dirname "$root/src/$f")"
    rm -f "$root/src/$f"
    cp "$stage/$f" "$root/src/$f"
  fi
done
rm -rf "$stage"
if [ "$what" = build ] || [ "$what" = all ]; then
  in_root bash -c "cd /src && cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined \
      -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--allow-shlib-undefined >/tmp/cuda-configure.log &&
    grep -E 'CUDA graphs for the denoising step|Found Torch' /tmp/cuda-configure.log &&
    cmake --build build-cuda -j $jobs -- -k 0"
fi
if [ "$what" = test ] || [ "$what" = all ]; then
  in_root bash -c "cd /src/build-cuda && OMP_NUM_THREADS=1 ctest -j $jobs --timeout 900 \
    --output-on-failure ${TESTS:+-R '$TESTS'}"
fi
