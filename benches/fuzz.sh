#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 600), one
# after another, keeping the corpus in fuzz/corpus/<target> and any crash
# in fuzz/artifacts/<target>. Prints one line per target: runs, corpus size,
# crashes. Needs the nightly toolchain and `cargo install cargo-fuzz`; the
# extraction target chroots into a jail of its own, so run it as root.
#
#   benches/fuzz.sh [SECONDS] [target ...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dockerfile dockerignore extract manifest endpoint units)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/dev/shm/fuzz-target}
cargo +nightly fuzz build -O >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  extra=()
  asan=${ASAN_OPTIONS:-}
  # The extraction target runs chrooted into a jail without /proc, where
  # LeakSanitizer cannot run its exit check (it reports that as a crash).
  if [ "$t" = extract ]; then extra=(-detect_leaks=0); asan=detect_leaks=0; fi
  # -jobs/-workers 1: the machine has two cores and the other one builds.
  if ASAN_OPTIONS=$asan cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -timeout=10 -artifact_prefix="artifacts/$t/" "${extra[@]}" >"$log" 2>&1; then status=ok; else status=FAILED; fi
  runs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}' | tail -1 || true)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '%-13s %s  %s runs in %ss, corpus %s inputs, %s crash files\n' "$t" "$status" "${runs:-?}" "$secs" \
    "$(find "corpus/$t" -type f | wc -l)" "$crashes"
  [ "$status" = ok ] || tail -40 "$log"
  rm -f "$log"
done
