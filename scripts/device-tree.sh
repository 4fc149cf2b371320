#!/usr/bin/env bash
# Slims what the device tool sends to the GPU machine, and puts it back. That tool sends every
# tracked file and every untracked file git does not ignore, at most 64 MiB with what `carry`
# names: the fixtures alone are 59 MiB, the packed build dependencies (.devdeps) 16 MiB more.
# device-check.sh needs only tests/fixtures/tiny-sd1 of them; the SDXL and single-file/LoRA
# fixtures leave the index (git rm --cached: the files stay on disk) and are ignored in
# .git/info/exclude until `restore`. While slimmed, a pre-commit hook refuses every commit, so
# their removal cannot be committed by mistake.
#
#   scripts/device-tree.sh slim       (then the device run, carry [".devdeps"])
#   scripts/device-tree.sh restore    (at once after it)
#   scripts/device-tree.sh size       (MiB that would travel now, .devdeps included)
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(tests/fixtures/tiny-sdxl tests/fixtures/tiny-sd1-extras)
exclude=.git/info/exclude
hook=.git/hooks/pre-commit
marker="# diffusiond device-tree slim"
size() {
  { git ls-files -z --cached --others --exclude-standard; find .devdeps -type f -print0 2>/dev/null; } |
    xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {printf "%.1f MiB would travel\n", s / 1048576}'
}
case "${1:-}" in
  slim)
    git rm -r -q --cached "${paths[@]}"
    mkdir -p .git/info .git/hooks
    for p in "${paths[@]}"; do echo "/$p/ $marker" >>"$exclude"; done
    sed -i "s| $marker\$||" "$exclude"
    printf '#!/bin/sh\n%s\necho "the tree is slimmed for the device run: scripts/device-tree.sh restore first" >&2\nexit 1\n' \
      "$marker" >"$hook"
    chmod +x "$hook"
    size
    ;;
  restore)
    git reset -q -- "${paths[@]}"
    for p in "${paths[@]}"; do sed -i "\|^/$p/\$|d" "$exclude"; done
    if [ -f "$hook" ] && grep -qF "$marker" "$hook"; then rm -f "$hook"; fi
    git status --short -- "${paths[@]}"
    size
    ;;
  size) size ;;
  *) echo "usage: scripts/device-tree.sh slim|restore|size" >&2; exit 2 ;;
esac
