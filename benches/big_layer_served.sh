#!/usr/bin/env bash
# A 1 GiB layer through the whole path (issue 14): one 1 GiB random file and
# 50,000 small files in one COPY, built with --cache into Kiln's cache server
# and pushed to it, then pulled back from it with skopeo. Peak RSS of the
# executor and of the cache server (from /usr/bin/time, the server's over
# its whole life: receiving the cache entry and the push, and serving the
# pull), side by side with docker-registry receiving the same push and
# serving the same pull. All on tmpfs.
#
#   bash benches/big_layer_served.sh [MiB] [small files]   (default 1024 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB="${1:-1024}"
SMALL="${2:-50000}"
cargo build --release -q -p kiln-executor --bin executor -p kiln-cache-server --bin cache-server
EXE="$PWD/target/release/executor"
SRV="$PWD/target/release/cache-server"
SHM=$(mktemp -d /dev/shm/kiln-served.XXXXXX)
. benches/lib.sh
cleanup() { kill "${SRV_PID:-}" "${REG_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$SHM"; }
trap cleanup EXIT

mkdir -p "$SHM/ctx/small"
head -c "$((MIB << 20))" /dev/urandom > "$SHM/ctx/big"
python3 - "$SHM/ctx/small" "$SMALL" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 500}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "w") as f:
        f.write(f"small file {i}\n" * 8)
PY
printf 'FROM scratch\nCOPY . /data\n' > "$SHM/ctx/Dockerfile"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/bin/time -f '%M' -o "$SHM/srv.rss" "$SRV" serve --listen "127.0.0.1:$port" \
  --storage "file://$SHM/store" --data-dir "$SHM/srv-data" > "$SHM/srv.log" 2>&1 &
SRV_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
start_registry

run_build() { # dest → executor seconds; peak RSS in $SHM/exe.rss
  rm -rf "$SHM/work"
  local s e
  s=$(now)
  /usr/bin/time -f '%M' -o "$SHM/exe.rss" "$EXE" --context "$SHM/ctx" --kaniko-dir "$SHM/work" \
    --insecure --insecure-registry "127.0.0.1:$port" --cache --cache-repo "127.0.0.1:$port/cache/big" \
    --destination "$1" > "$SHM/exe.log" 2>&1 || { tail -20 "$SHM/exe.log"; exit 1; }
  e=$(now)
  echo "$e - $s" | bc
}
pull() { # ref → seconds
  rm -rf "$SHM/pulled"
  local s e
  s=$(now)
  skopeo copy --quiet --src-tls-verify=false "docker://$1" "oci:$SHM/pulled:x"
  e=$(now)
  echo "$e - $s" | bc
}

T_KILN=$(run_build "127.0.0.1:$port/app/big:1")
EXE_RSS_KILN=$(( $(tail -1 "$SHM/exe.rss") / 1024 ))
P_KILN=$(pull "127.0.0.1:$port/app/big:1")
T_REG=$(run_build "$REG/app/big:1")
EXE_RSS_REG=$(( $(tail -1 "$SHM/exe.rss") / 1024 ))
P_REG=$(pull "$REG/app/big:1")

# TERM the server (the child of /usr/bin/time), which then reports its peak.
pkill -TERM -P "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true
SRV_RSS=$(( $(tail -1 "$SHM/srv.rss") / 1024 ))
REG_RSS=$(( $(ps -o rss= -p "$REG_PID" 2>/dev/null || echo 0) / 1024 ))
REG_HWM=$(( $(grep VmHWM "/proc/$REG_PID/status" | awk '{print $2}') / 1024 ))

echo "| ${MIB} MiB + ${SMALL} small files, one COPY layer | build + cache + push (s) | executor peak RSS MB | pull back with skopeo (s) | server peak RSS MB |"
echo "|---|---|---|---|---|"
echo "| Kiln cache server (file store on tmpfs) | $T_KILN | $EXE_RSS_KILN | $P_KILN | $SRV_RSS |"
echo "| docker-registry (filesystem on tmpfs; cache still in Kiln's server) | $T_REG | $EXE_RSS_REG | $P_REG | $REG_HWM (VmHWM; now $REG_RSS) |"
