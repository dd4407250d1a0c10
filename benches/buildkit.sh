#!/usr/bin/env bash
# Kiln against BuildKit (the Docker Engine's own builder, Debian's docker.io,
# inline cache in the registry) on a fresh runner each time, with the byte
# floor of the same machine measured in the same run (issue 16).
#
# Base: one layer of 20,000 files (~210 MB). Dockerfile: a small RUN, a COPY
# of 300 files, a RUN writing 48 MB, a RUN reading the copied files. Every
# build pushes its image to a loopback docker-registry. "Fresh runner" means:
# Kiln with a new work dir, BuildKit with a pruned daemon (no images, no build
# cache). Everything on tmpfs; tools alternated; medians.
#
#   bash benches/buildkit.sh [runs]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
bash .ci/setup >/dev/null
cargo build --release -q -p kiln-executor --bin executor -p kiln-warmer --bin warmer
EXE="$PWD/target/release/executor"
WARMER="$PWD/target/release/warmer"
SHM=$(mktemp -d /dev/shm/kb.XXXXXX)
DOCKER=(/usr/bin/docker -H "unix://$SHM/d.sock")
cleanup() {
  "${DOCKER[@]}" system prune -af >/dev/null 2>&1 || true
  [ -f "$SHM/d.pid" ] && kill "$(cat "$SHM/d.pid")" 2>/dev/null && sleep 2
  kill "${REG_PID:-}" 2>/dev/null || true
  grep -o " $SHM[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$SHM"
}
trap cleanup EXIT
. benches/lib.sh
start_registry

dockerd --data-root "$SHM/data" --exec-root "$SHM/exec" --pidfile "$SHM/d.pid" -H "unix://$SHM/d.sock" \
  --bridge=none --iptables=false --ip-masq=false >"$SHM/dockerd.log" 2>&1 &
for _ in $(seq 150); do "${DOCKER[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
"${DOCKER[@]}" version >/dev/null || { cat "$SHM/dockerd.log"; exit 1; }

echo "preparing the base (20,000 files, one layer) on $REG ..."
KEEP_TAR="$SHM/base.tar" make_base base 20000 mixed

CTX="$SHM/ctx"
mkdir -p "$CTX/src"
for i in $(seq 300); do head -c 2000 /dev/urandom | base64 > "$CTX/src/file$i.txt"; done
cat > "$CTX/Dockerfile" <<EOF
FROM $REG/base:latest
RUN echo small > /small
COPY src/ /app/src/
RUN dd if=/dev/urandom of=/data.bin bs=1M count=48 2>/dev/null
RUN cat /app/src/* | wc -c > /app/count
EOF

kiln() { # label cache-repo [extra flags] -> seconds; a fresh work dir (a new runner)
  local repo=$2
  shift 2
  kiln_timed "$CTX" "$REG/kout:latest" "$REG/$repo" "$@"
}
buildkit() { # image -> seconds; a pruned daemon (a new runner), inline cache from the registry
  buildkit_timed "$CTX" "$1" yes
}
step() { # report -> seconds of the named step prefix
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(s["seconds"] for s in r["steps"] if s["instruction"].startswith(sys.argv[2])))' "$SHM/report.json" "$1"
}
row() { # label kiln-file bk-file
  local K B
  K=$(median < "$2"); B=$(median < "$3")
  printf '| %s | %.2f s | %.2f s | %.3f |\n' "$1" "$K" "$B" "$(echo "$K / $B" | bc -l)" | tee -a "$SHM/table"
}
: > "$SHM/table"

echo "cold: empty cache, fresh runner ($RUNS runs each, alternating)"
: > "$SHM/kc"; : > "$SHM/bc"; : > "$SHM/kc-from"; : > "$SHM/kc-run"
for i in $(seq "$RUNS"); do
  kiln cold "kcold-$i" >> "$SHM/kc"
  step FROM >> "$SHM/kc-from"; step "RUN dd" >> "$SHM/kc-run"
  buildkit "$REG/bkcold$i:latest" >> "$SHM/bc"
done
echo "  kiln: FROM $(median < "$SHM/kc-from") s, 48 MB RUN $(median < "$SHM/kc-run") s (medians, --report)"

echo "cold with a warmed, extracted base (empty cache)"
rm -rf "$SHM/warm"
"$WARMER" --cache-dir "$SHM/warm" --insecure-pull --extract-layers --image "$REG/base:latest" >/dev/null 2>&1
: > "$SHM/kcw"
for i in $(seq "$RUNS"); do
  kiln cold-warm "kcoldw-$i" --cache-dir "$SHM/warm" >> "$SHM/kcw"
done

echo "fully cached, fresh runner"
kiln warm kwarm >/dev/null
buildkit "$REG/bkwarm:latest" >/dev/null
: > "$SHM/kw"; : > "$SHM/bw"
for _ in $(seq "$RUNS"); do
  kiln warm kwarm >> "$SHM/kw"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["cache_misses"]==0, r' "$SHM/report.json"
  buildkit "$REG/bkwarm:latest" >> "$SHM/bw"
done

echo "one copied file changed, fresh runner"
: > "$SHM/k1"; : > "$SHM/b1"; : > "$SHM/k1w"
cp "$CTX/src/file1.txt" "$SHM/file1.orig"
for i in $(seq "$RUNS"); do
  echo "change $i $RANDOM" > "$CTX/src/file1.txt"
  kiln one kwarm >> "$SHM/k1"
  echo "change $i $RANDOM warm" > "$CTX/src/file1.txt"
  kiln one-warm kwarm --cache-dir "$SHM/warm" >> "$SHM/k1w"
  grep -q "root stacked on" "$SHM/kiln.log" || { echo "the warmed base was not stacked"; cat "$SHM/kiln.log"; exit 1; }
  echo "change $i $RANDOM bk" > "$CTX/src/file1.txt"
  buildkit "$REG/bkwarm:latest" >> "$SHM/b1"
done
cp "$SHM/file1.orig" "$CTX/src/file1.txt"

echo "floor: the same bytes through the minimal tools, same machine, same run"
BLOB=$(find "$SHM/registry" -path '*/blobs/sha256/*/data' -size +100M | head -1)
BIG=$(head -c 50331648 /dev/urandom | tee "$SHM/48m" | wc -c)
floor() { # label command... -> seconds (median of 3)
  local l=$1 f="$SHM/floor-$1"; shift
  : > "$f"
  for _ in 1 2 3; do rm -rf "$SHM/fx"; mkdir -p "$SHM/fx"; settle; t0=$(now); "$@" >/dev/null; t1=$(now); echo "$t1 - $t0" | bc >> "$f"; done
  median < "$f"
}
F_XFER=$(floor xfer curl -sS -o /dev/null "http://$REG/v2/base/blobs/sha256:$(basename "$(dirname "$BLOB")")")
# The fastest inflater at hand (pigz's is zlib's, quicker than GNU gzip's).
if command -v pigz >/dev/null; then UNGZ="pigz -dc"; else UNGZ="gzip -dc"; fi
F_GUNZIP=$(floor gunzip sh -c "$UNGZ < '$BLOB'")
F_SHA=$(floor sha sh -c "openssl dgst -sha256 '$BLOB'")
F_TARX=$(floor tarx tar -C "$SHM/fx" -xf "$SHM/base.tar")
if command -v pigz >/dev/null; then GZ=(pigz -6 -c); else GZ=(gzip -6 -c); fi
F_GZ48=$(floor gz48 sh -c "${GZ[*]} < '$SHM/48m'")
upload48() { # a monolithic upload as the distribution spec has it: POST, then PUT with the digest
  local loc
  loc=$(curl -sS -D - -o /dev/null -X POST "http://$REG/v2/floor/blobs/uploads/" | grep -i '^location:' | cut -d' ' -f2 | tr -d '\r')
  case "$loc" in http*) ;; *) loc="http://$REG$loc" ;; esac
  curl -sS -o /dev/null -X PUT -H "Content-Type: application/octet-stream" --data-binary "@$SHM/48m" "$loc&digest=sha256:$D48"
}
D48=$(sha256sum "$SHM/48m" | cut -d' ' -f1)
F_PUSH48=$(floor push48 upload48)
# Cold floor: fetch and unpack the base (transfer, gunzip, files written),
# compress and send the 48 MB layer; hashing runs beside these.
F_COLD=$(echo "$F_XFER + $F_GUNZIP + $F_TARX + $F_GZ48 + $F_PUSH48" | bc)
# One file changed: only the layers from the change on are rebuilt, but the
# RUN after it needs the base's files (unpacked) and the 48 MB layer again.
F_ONE=$F_COLD
# With a warmed, pre-extracted base nothing of the base is moved.
F_ONEW=$(echo "$F_GZ48 + $F_PUSH48" | bc)
printf '  transfer %s s, inflate %s s, sha256 %s s, tar -x %s s (base: %s bytes); %s of 48 MB %s s; upload of 48 MB %s s\n' \
  "$F_XFER" "$F_GUNZIP" "$F_SHA" "$F_TARX" "$(stat -c %s "$BLOB")" "${GZ[0]}" "$F_GZ48" "$F_PUSH48"

echo
echo "| scenario | Kiln | BuildKit | ratio | floor | Kiln ÷ floor |"
echo "|---|---|---|---|---|---|"
fl() { printf '%.2f s | %.1f' "$2" "$(echo "$(median < "$1") / $2" | bc -l)"; }
K=$(median < "$SHM/kc"); B=$(median < "$SHM/bc")
printf '| cold | %.2f s | %.2f s | %.3f | %s |\n' "$K" "$B" "$(echo "$K / $B" | bc -l)" "$(fl "$SHM/kc" "$F_COLD")"
K=$(median < "$SHM/kcw"); B=$(median < "$SHM/bc")
printf '| cold, warmed base | %.2f s | %.2f s | %.3f | %s |\n' "$K" "$B" "$(echo "$K / $B" | bc -l)" "$(fl "$SHM/kcw" "$F_ONEW")"
K=$(median < "$SHM/kw"); B=$(median < "$SHM/bw")
printf '| fully cached | %.2f s | %.2f s | %.3f | — | — |\n' "$K" "$B" "$(echo "$K / $B" | bc -l)"
K=$(median < "$SHM/k1"); B=$(median < "$SHM/b1")
printf '| one file changed | %.2f s | %.2f s | %.3f | %s |\n' "$K" "$B" "$(echo "$K / $B" | bc -l)" "$(fl "$SHM/k1" "$F_ONE")"
K=$(median < "$SHM/k1w")
printf '| one file changed, warmed base | %.2f s | %.2f s | %.3f | %s |\n' "$K" "$B" "$(echo "$K / $B" | bc -l)" "$(fl "$SHM/k1w" "$F_ONEW")"
echo
echo "raw: kiln cold $(tr '\n' ' ' < "$SHM/kc")| kiln cold warmed $(tr '\n' ' ' < "$SHM/kcw")| bk cold $(tr '\n' ' ' < "$SHM/bc")| kiln cached $(tr '\n' ' ' < "$SHM/kw")| bk cached $(tr '\n' ' ' < "$SHM/bw")| kiln one $(tr '\n' ' ' < "$SHM/k1")| kiln one warmed $(tr '\n' ' ' < "$SHM/k1w")| bk one $(tr '\n' ' ' < "$SHM/b1")"
