#!/usr/bin/env bash
# Writing big layers (issue 17): a COPY of 1 GiB of random bytes and a COPY
# of a compressible tree, as gzip and as zstd layers, side by side with the
# machine's own floor in the same run: `openssl dgst -sha256` and `cat` of
# the same bytes, and `gzip -6` / `pigz -6` (when installed) of them. Step
# seconds come from --report (the COPY step only); peak RSS from
# /usr/bin/time. All on tmpfs; runs alternate; medians.
#
#   bash benches/big_layer.sh [runs] [MiB]      (default 3, 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
MIB="${2:-1024}"
cargo build --release -q -p kiln-executor --bin executor -p kiln-benches --bin compress
EXE="$PWD/target/release/executor"
COMPRESS="$PWD/target/release/compress"
SHM=$(mktemp -d /dev/shm/kiln-big.XXXXXX)
trap 'rm -rf "$SHM"' EXIT
. benches/lib.sh

mkdir -p "$SHM/random" "$SHM/text"
head -c "$((MIB << 20))" /dev/urandom > "$SHM/random/big"
printf 'FROM scratch\nCOPY big /big\n' > "$SHM/random/Dockerfile"
python3 - "$SHM/text/tree" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(20000):
    d = os.path.join(root, f"d{i % 100}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write("".join(f"line {j} of file {i}: some ordinary text\n" for j in range(60)))
PY
printf 'FROM scratch\nCOPY tree /tree\n' > "$SHM/text/Dockerfile"
TEXT_MB=$(du -sm "$SHM/text/tree" | cut -f1)
# The same bytes for the compressor alone: the tree as one tar stream.
tar -C "$SHM/text" -cf "$SHM/tree.tar" tree

step_secs() { # report.json → the COPY step's seconds
  python3 -c 'import json,sys; print([s["seconds"] for s in json.load(open(sys.argv[1]))["steps"] if s["instruction"].startswith("COPY")][0])' "$1"
}
layer_mb() {
  python3 -c 'import json,sys; print(round([s["layer_size"] for s in json.load(open(sys.argv[1]))["steps"] if s["instruction"].startswith("COPY")][0]/1048576,1))' "$1"
}

declare -A T RSS SIZE
for r in $(seq "$RUNS"); do
  for data in random text; do
    for comp in gzip zstd; do
      rm -rf "$SHM/work" "$SHM/out"
      settle
      /usr/bin/time -f '%M' -o "$SHM/rss" "$EXE" --context "$SHM/$data" --no-push \
        --compression "$comp" --oci-layout-path "$SHM/out" --kaniko-dir "$SHM/work" \
        --report "$SHM/report.json" >/dev/null 2>&1
      T[$data-$comp]+="$(step_secs "$SHM/report.json") "
      RSS[$data-$comp]+="$(cat "$SHM/rss") "
      SIZE[$data-$comp]=$(layer_mb "$SHM/report.json")
    done
  done
  # Compressible bytes, compressor alone: Kiln's gzip (both cores) and GNU
  # gzip -6 (one core) on the same tar stream.
  settle
  read -r t size < <("$COMPRESS" gzip "$SHM/tree.tar")
  T[kiln-tar]+="$t "; KILN_TAR_SIZE=$size
  s=$(date +%s.%N); gzip -6 -c "$SHM/tree.tar" > "$SHM/tree.tar.gz"; e=$(date +%s.%N)
  T[gzip6-tar]+="$(echo "$e - $s" | bc) "; GZIP_TAR_SIZE=$(stat -c %s "$SHM/tree.tar.gz")
  for data in random; do
    settle
    s=$(date +%s.%N); openssl dgst -sha256 "$SHM/random/big" >/dev/null; e=$(date +%s.%N)
    T[sha256]+="$(echo "$e - $s" | bc) "
    s=$(date +%s.%N); gzip -6 -c "$SHM/random/big" > /dev/null; e=$(date +%s.%N)
    T[gzip6]+="$(echo "$e - $s" | bc) "
  done
done
mbps() { echo "scale=0; $1 / $2" | bc; }
SHA=$(echo "${T[sha256]}" | median)
G6=$(echo "${T[gzip6]}" | median)
echo "| bytes | layer | Kiln s | MB/s | × sha256 floor | peak RSS MB | layer MB |"
echo "|---|---|---|---|---|---|---|"
for data in random text; do
  mb=$MIB; [ "$data" = text ] && mb=$TEXT_MB
  for comp in gzip zstd; do
    t=$(echo "${T[$data-$comp]}" | median)
    rss=$(( $(echo "${RSS[$data-$comp]}" | median | cut -d. -f1) / 1024 ))
    echo "| $data $mb MiB | $comp | $t | $(mbps "$mb" "$t") | $(echo "scale=2; $(mbps "$mb" "$t") / $(mbps "$MIB" "$SHA")" | bc) | $rss | ${SIZE[$data-$comp]} |"
  done
done
echo
echo "floor on the same $MIB MiB of random bytes: openssl sha256 ${SHA}s ($(mbps "$MIB" "$SHA") MB/s); GNU gzip -6 ${G6}s ($(mbps "$MIB" "$G6") MB/s)"
KT=$(echo "${T[kiln-tar]}" | median)
GT=$(echo "${T[gzip6-tar]}" | median)
echo "compressible, same bytes ($(( $(stat -c %s "$SHM/tree.tar") >> 20 )) MiB tar of the text tree), compressor alone: Kiln gzip ${KT}s, ${KILN_TAR_SIZE} bytes; GNU gzip -6 ${GT}s, ${GZIP_TAR_SIZE} bytes; time ratio $(echo "scale=2; $KT / $GT" | bc), size ratio $(echo "scale=4; $KILN_TAR_SIZE / $GZIP_TAR_SIZE" | bc)"
