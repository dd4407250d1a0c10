#!/usr/bin/env bash
# Shared cache mounts (issue 13): a "package manager" RUN that downloads
# 1,000 files of 64 KiB from a loopback HTTP server into a cache mount
# unless they are there. Pod A: cold (nothing shared); pod B: a fresh work
# dir, the mount restored from the cache repo (docker-registry); pod C: one
# of the 1,000 files changes — bytes uploaded by the save. RUN step seconds
# and mount figures from --report; tmpfs; medians.
#
#   bash benches/cache_mounts.sh [runs]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
cargo build --release -q -p kiln-executor --bin executor
EXE="$PWD/target/release/executor"
SHM=$(mktemp -d /dev/shm/kiln-mounts.XXXXXX)
cleanup() { kill "${REG_PID:-}" "${HTTP_PID:-}" 2>/dev/null || true; rm -rf "$SHM"; }
trap cleanup EXIT
. benches/lib.sh
start_registry
make_base mbase 10 >/dev/null
BASE="$REG/mbase:latest"
mkdir -p "$SHM/pkgs"
python3 - "$SHM/pkgs" <<'PY'
import os, sys
for i in range(1, 1001):
    with open(os.path.join(sys.argv[1], f"p{i}"), "wb") as f:
        f.write(os.urandom(64 << 10))
PY
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$SHM/pkgs" && python3 -m http.server --bind 127.0.0.1 "$PORT" >/dev/null 2>&1) &
HTTP_PID=$!
sleep 1

build() { # run stamp extra-shell
  local ctx="$SHM/ctx-$1-$2"
  mkdir -p "$ctx"
  cat > "$ctx/Dockerfile" <<DF
FROM $BASE
ENV STAMP=$1-$2
RUN --mount=type=cache,target=/var/cache/pkgs sh -c 'for i in \$(seq 1 1000); do [ -f /var/cache/pkgs/p\$i ] || wget -q -O /var/cache/pkgs/p\$i http://127.0.0.1:$PORT/p\$i; done; $3 ls /var/cache/pkgs | wc -l > /count'
DF
  rm -rf "$SHM/work"
  "$EXE" --context "$ctx" --no-push --insecure-pull --insecure-registry "$REG" \
    --cache --cache-repo "$REG/cache-$1" --kaniko-dir "$SHM/work" \
    --report "$SHM/report.json" >/dev/null 2>&1
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); s=[x for x in r["steps"] if x["instruction"].startswith("RUN")][0]; m=r["cache_mounts"][0]; print(s["seconds"], m["restored_files"], m["restored_bytes"], m["saved_files"], m["saved_bytes"])' "$SHM/report.json"
}
declare -A S
for r in $(seq "$RUNS"); do
  read -r t _ _ sf sb < <(build "$r" a "")
  S[cold]+="$t "; SAVED_A="$sf files, $sb bytes"
  read -r t rf rb _ _ < <(build "$r" b "")
  S[restored]+="$t "; RESTORED="$rf files, $rb bytes"
  read -r t _ _ sf sb < <(build "$r" c "head -c 65536 /dev/urandom > /var/cache/pkgs/p7;")
  S[one]+="$t "; SAVED_C="$sf files, $sb bytes"
done
med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "| pod | RUN step s (median of $RUNS) | shared-cache traffic |"
echo "|---|---|---|"
echo "| A: cold, nothing shared | $(echo "${S[cold]}" | med) | saved $SAVED_A |"
echo "| B: fresh work dir, mount restored | $(echo "${S[restored]}" | med) | restored $RESTORED, fetched 0 packages |"
echo "| C: 1 of 1,000 files changed | $(echo "${S[one]}" | med) | saved $SAVED_C |"
