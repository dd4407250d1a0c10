#!/usr/bin/env bash
# Pull-through mirrors side by side: Kiln's cache server in mirror mode
# against docker-registry's own proxy mode (`proxy.remoteurl`), in front of
# the same upstream docker-registry, everything on tmpfs. Per mirror: the
# first (cold) pull of a ~60 MB base, then N cached pulls (skopeo copy to a
# fresh OCI layout each time), alternating mirrors; and the requests the
# upstream saw in all. Prints medians and ratios.
#   bash benches/mirror.sh [pulls]      (default 20 cached pulls per mirror)
set -euo pipefail
cd "$(dirname "$0")/.."
PULLS="${1:-20}"
bash .ci/setup >/dev/null
cargo build --release -q -p kiln-cache-server --bin cache-server
SERVER="$PWD/target/release/cache-server"
SHM=$(mktemp -d /dev/shm/kiln-mirror.XXXXXX)
cleanup() { kill $REG_PID ${PROXY_PID:-} ${KILN_PID:-} 2>/dev/null || true; rm -rf "$SHM"; }
trap cleanup EXIT
. benches/lib.sh
start_registry
UP=$REG

B="$SHM/base"; random_base "$B"
skopeo copy -q --dest-tls-verify=false "oci:$B/layout:base" "docker://$UP/library/base:1"
rm -rf "$B"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# docker-registry in proxy mode.
PP=$(port)
cat > "$SHM/proxy.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $SHM/proxy}}
http: {addr: 127.0.0.1:$PP}
proxy: {remoteurl: http://$UP}
EOF
docker-registry serve "$SHM/proxy.yml" > "$SHM/proxy.log" 2>&1 &
PROXY_PID=$!
# Kiln's cache server as a mirror of the same upstream.
KP=$(port)
"$SERVER" serve --listen "127.0.0.1:$KP" --storage "file://$SHM/kiln" \
  --mirror "docker.io=http://$UP" > "$SHM/kiln.log" 2>&1 &
KILN_PID=$!
for p in $PP $KP; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done
done

upstream_requests() { grep -c '"GET /v2/\|"HEAD /v2/' "$SHM/registry.log" || true; }
pull() { # image
  rm -rf "$SHM/out"
  skopeo copy -q --src-tls-verify=false "docker://$1" "oci:$SHM/out:x"
}
time_pull() { local t0 t1; settle; t0=$(now); pull "$1"; t1=$(now); echo "$t1 - $t0" | bc; }

R0=$(upstream_requests)
COLD_P=$(time_pull "127.0.0.1:$PP/library/base:1"); R1=$(upstream_requests)
COLD_K=$(time_pull "127.0.0.1:$KP/docker.io/library/base:1"); R2=$(upstream_requests)
: > "$SHM/p"; : > "$SHM/k"
RP=0; RK=0
for _ in $(seq "$PULLS"); do
  a=$(upstream_requests); time_pull "127.0.0.1:$PP/library/base:1" >> "$SHM/p"; b=$(upstream_requests); RP=$((RP + b - a))
  a=$(upstream_requests); time_pull "127.0.0.1:$KP/docker.io/library/base:1" >> "$SHM/k"; b=$(upstream_requests); RK=$((RK + b - a))
done
P=$(median < "$SHM/p"); K=$(median < "$SHM/k")
echo "cold pull (s):            docker-registry proxy $COLD_P   kiln mirror $COLD_K"
echo "cached pull, median (s):  docker-registry proxy $P   kiln mirror $K   ratio kiln/proxy $(echo "scale=2; $K / $P" | bc)"
echo "upstream requests, cold:  docker-registry proxy $((R1 - R0))   kiln mirror $((R2 - R1))"
echo "upstream requests, $PULLS cached pulls: docker-registry proxy $RP   kiln mirror $RK"
