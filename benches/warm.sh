#!/usr/bin/env bash
# Warming a set of images that share base layers: Kiln's warmer (one run,
# parallel, deduplicated) against one `skopeo copy` per image into an OCI
# layout, side by side on the same registry, fresh directories each run,
# everything on tmpfs. Prints medians, the ratio, and bytes fetched vs the
# unique bytes of the set.
#   bash benches/warm.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
bash .ci/setup >/dev/null
cargo build --release -q -p kiln-warmer --bin warmer
WARMER="$PWD/target/release/warmer"
SHM=$(mktemp -d /dev/shm/kiln-warm.XXXXXX)
trap 'kill $REG_PID 2>/dev/null || true; rm -rf "$SHM"' EXIT
. benches/lib.sh
start_registry

# A ~60 MB base (busybox + pseudo-random data) and 4 images built on it.
B="$SHM/base"; random_base "$B"
IMAGES=("$REG/base:1")
skopeo copy -q --dest-tls-verify=false "oci:$B/layout:base" "docker://$REG/base:1"
for n in 1 2 3 4; do
  rm -rf "$B/b$n"
  umoci unpack --image "$B/layout:base" "$B/b$n" >/dev/null
  head -c 5000000 /dev/urandom > "$B/b$n/rootfs/app$n.bin"
  umoci repack --image "$B/layout:app$n" "$B/b$n" >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$B/layout:app$n" "docker://$REG/app$n:1"
  IMAGES+=("$REG/app$n:1")
done
rm -rf "$B"

: > "$SHM/w"; : > "$SHM/s"
for _ in $(seq "$RUNS"); do
  rm -rf "$SHM/wdir"; args=(); for i in "${IMAGES[@]}"; do args+=(--image "$i"); done
  t0=$(now); "$WARMER" --cache-dir "$SHM/wdir" --insecure-pull --report "$SHM/report.json" "${args[@]}" 2>/dev/null; t1=$(now)
  echo "$t1 - $t0" | bc >> "$SHM/w"
  rm -rf "$SHM/sdir"
  t0=$(now); for i in "${IMAGES[@]}"; do skopeo copy -q --src-tls-verify=false "docker://$i" "oci:$SHM/sdir:${i##*/}"; done; t1=$(now)
  echo "$t1 - $t0" | bc >> "$SHM/s"
done
W=$(median < "$SHM/w"); S=$(median < "$SHM/s")
FETCHED=$(python3 -c 'import json,sys; print(sum(i["bytes_fetched"] for i in json.load(open(sys.argv[1]))["images"]))' "$SHM/report.json")
UNIQUE=$(python3 - "$SHM/wdir" <<'PY'
import json, os, sys
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
layers = set()
for m in idx["manifests"]:
    man = json.load(open(os.path.join(d, "blobs/sha256", m["digest"].split(":")[1])))
    for l in man["layers"]:
        layers.add((l["digest"], l["size"]))
print(sum(s for _, s in layers))
PY
)
printf 'warming %d images sharing a base, %s runs each (alternating)\n' "${#IMAGES[@]}" "$RUNS"
printf '  warmer       median %6.2fs  (%s)\n' "$W" "$(tr '\n' ' ' < "$SHM/w")"
printf '  skopeo copy  median %6.2fs  (%s)\n' "$S" "$(tr '\n' ' ' < "$SHM/s")"
printf '  ratio warmer/skopeo = %.3f  (target <= 0.5)\n' "$(echo "$W / $S" | bc -l)"
printf '  layer bytes fetched by the warmer %s, unique layer bytes of the set %s\n' "$FETCHED" "$UNIQUE"
