#!/usr/bin/env bash
# End-to-end comparison: the same Dockerfile on the same base, built by Kiln's
# executor and by `buildah bud --isolation chroot`, alternating, from a fresh
# local state each time, with every tool's work dirs on tmpfs (/dev/shm).
# Prints medians and ratios measured side by side in this one run.
#
#   bash benches/compare.sh [runs]      (default 3 runs per tool)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
bash .ci/setup >/dev/null
cargo build --release -q -p kiln-executor --bin executor
EXE="$PWD/target/release/executor"
SHM=$(mktemp -d /dev/shm/kiln-bench.XXXXXX)
trap 'kill $REG_PID 2>/dev/null || true; rm -rf "$SHM"' EXIT

. benches/lib.sh
start_registry

echo "preparing bases on $REG ..."
make_base base20k 20000
make_base base10k 10000
make_base base100k 100000

CTX="$SHM/ctx"
mkdir -p "$CTX/src"
for i in $(seq 200); do echo "source $i" > "$CTX/src/file$i.txt"; done
cat > "$CTX/Dockerfile" <<EOF
FROM $REG/base20k:latest
COPY src/ /app/src/
RUN mkdir -p /app/out && for i in 1 2 3 4 5; do echo \$i > /app/out/\$i; done
RUN rm -rf /usr/share/data/d0 && echo done > /app/done
ENV MODE=bench
CMD ["cat", "/app/done"]
EOF


kiln_build() { # dockerfile [extra flags...] -> seconds
  local df=$1 w="$SHM/kiln-work" t0 t1
  shift
  rm -rf "$w" "$SHM/kiln-out"; mkdir -p "$w"
  t0=$(now)
  "$EXE" --context "$CTX" --dockerfile "$df" --no-push --insecure-pull --insecure-registry "$REG" --oci-layout-path "$SHM/kiln-out" \
    --kaniko-dir "$w" --report "$SHM/report.json" "$@" >"$SHM/kiln.log" 2>&1 || { cat "$SHM/kiln.log"; exit 1; }
  t1=$(now); echo "$t1 - $t0" | bc
}
buildah_build() { # dockerfile [extra flags...] -> seconds; fresh local storage each time
  local df=$1 s="$SHM/buildah" t0 t1
  shift
  rm -rf "$s"; mkdir -p "$s"
  printf 'unqualified-search-registries = []\n' > "$SHM/registries.conf"
  t0=$(now)
  REGISTRIES_CONFIG_PATH="$SHM/registries.conf" buildah --root "$s/root" --runroot "$s/run" --storage-driver vfs \
    bud -q --isolation chroot --tls-verify=false -f "$df" -t localhost/bench "$@" "$CTX" >"$SHM/buildah.log" 2>&1 || { cat "$SHM/buildah.log"; exit 1; }
  t1=$(now)
  echo "$t1 - $t0" | bc
}

echo "cold build, base of 20,000 files, $RUNS runs each (alternating)"
: > "$SHM/k"; : > "$SHM/b"
for _ in $(seq "$RUNS"); do
  kiln_build "$CTX/Dockerfile" >> "$SHM/k"
  buildah_build "$CTX/Dockerfile" >> "$SHM/b"
done
K=$(median < "$SHM/k"); B=$(median < "$SHM/b")
printf '  kiln    median %6.2fs  (%s)\n' "$K" "$(tr '\n' ' ' < "$SHM/k")"
printf '  buildah median %6.2fs  (%s)\n' "$B" "$(tr '\n' ' ' < "$SHM/b")"
printf '  ratio kiln/buildah = %.3f  (target <= 0.7)\n' "$(echo "$K / $B" | bc -l)"

echo "RUN that changes one file: 10,000- vs 100,000-file root (RUN step time from --report)"
for size in 10k 100k; do
  printf 'FROM %s/base%s:latest\nRUN echo changed > /one-file\n' "$REG" "$size" > "$CTX/Dockerfile.$size"
  : > "$SHM/run-$size"
  for _ in $(seq "$RUNS"); do
    kiln_build "$CTX/Dockerfile.$size" >/dev/null
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print([s for s in r["steps"] if s["instruction"].startswith("RUN")][0]["seconds"])' "$SHM/report.json" >> "$SHM/run-$size"
  done
done
R10=$(median < "$SHM/run-10k"); R100=$(median < "$SHM/run-100k")
printf '  RUN step median: 10k root %.4fs, 100k root %.4fs\n' "$R10" "$R100"
printf '  ratio 100k/10k = %.3f  (target <= 1.5)\n' "$(echo "$R100 / $R10" | bc -l)"

echo "layer cache on the same registry: kiln --cache vs buildah --layers --cache-from/--cache-to (fresh local state each build)"
report() { # label kiln-file buildah-file target
  local K B
  K=$(median < "$2"); B=$(median < "$3")
  printf '  %-22s kiln %6.2fs  buildah %6.2fs  ratio %.3f%s\n' "$1" "$K" "$B" "$(echo "$K / $B" | bc -l)" "$4"
}
: > "$SHM/kc"; : > "$SHM/bc"
for i in $(seq "$RUNS"); do
  kiln_build "$CTX/Dockerfile" --cache --cache-repo "$REG/kcache-cold-$i" >> "$SHM/kc"
  buildah_build "$CTX/Dockerfile" --layers --cache-to "$REG/bcache-cold-$i" --cache-from "$REG/bcache-cold-$i" >> "$SHM/bc"
done
report "cold" "$SHM/kc" "$SHM/bc" ""
# Populate one warm cache per tool, then time fully cached builds.
kiln_build "$CTX/Dockerfile" --cache --cache-repo "$REG/kcache-warm" >/dev/null
buildah_build "$CTX/Dockerfile" --layers --cache-to "$REG/bcache-warm" --cache-from "$REG/bcache-warm" >/dev/null
: > "$SHM/kw"; : > "$SHM/bw"
for _ in $(seq "$RUNS"); do
  kiln_build "$CTX/Dockerfile" --cache --cache-repo "$REG/kcache-warm" >> "$SHM/kw"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["cache_misses"]==0, r' "$SHM/report.json"
  buildah_build "$CTX/Dockerfile" --layers --cache-to "$REG/bcache-warm" --cache-from "$REG/bcache-warm" >> "$SHM/bw"
done
report "fully cached" "$SHM/kw" "$SHM/bw" "  (target <= 0.1)"
: > "$SHM/k1"; : > "$SHM/b1"
cp "$CTX/src/file1.txt" "$SHM/file1.orig"
for i in $(seq "$RUNS"); do
  echo "change $i $RANDOM" > "$CTX/src/file1.txt"
  kiln_build "$CTX/Dockerfile" --cache --cache-repo "$REG/kcache-warm" >> "$SHM/k1"
  buildah_build "$CTX/Dockerfile" --layers --cache-to "$REG/bcache-warm" --cache-from "$REG/bcache-warm" >> "$SHM/b1"
done
cp "$SHM/file1.orig" "$CTX/src/file1.txt"
report "one copied file changed" "$SHM/k1" "$SHM/b1" "  (target <= 0.5)"
