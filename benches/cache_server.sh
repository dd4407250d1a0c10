#!/bin/bash
# Kiln's cache server vs docker-registry, side by side in one run, on the
# same machine and the same kind of storage (both on tmpfs, /dev/shm):
#   - manifest lookups by tag (GET, what a cache client does per step)
#     with 64 concurrent connections, by wrk: requests/s, p50 and p99;
#   - Kiln's batch lookup (100 keys per request), Kiln only;
#   - blob GET and PUT throughput of a 256 MiB blob, by curl, alternating
#     the servers, medians of 5; GETs of a 4 MiB blob over 4 connections
#     (wrk); GETs from a cache server over S3 (moto) whose disk tier holds
#     the blob after one fetch.
# Usage: benches/cache_server.sh [seconds per lookup run, default 10]
# (BLOBS_ONLY=1: the blob measurements alone)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v docker-registry >/dev/null || apt-get install -y docker-registry >/dev/null
cargo build --release -q -p kiln-cache-server
BIN=$PWD/target/release/cache-server
SHM=$(mktemp -d /dev/shm/kiln-cs-bench.XXXXXX)
cleanup() { kill "${REG_PID:-}" $(cat "$SHM"/*.pid 2>/dev/null) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$SHM"; }
trap cleanup EXIT
source benches/lib.sh

start_registry
# start_kiln NAME [flags]: a cache server over the tmpfs store; prints its address.
start_kiln() {
  local name=$1; shift
  "$BIN" serve --listen 127.0.0.1:0 --storage "file://$SHM/kiln" --data-dir "$SHM/$name-data" \
    --verbosity warn "$@" > "$SHM/$name.out" 2> "$SHM/$name.err" &
  echo $! > "$SHM/$name.pid"
  for _ in $(seq 100); do grep -q "listening on" "$SHM/$name.out" && break; sleep 0.1; done
  awk '{print $3}' "$SHM/$name.out"
}
KILN=$(start_kiln kiln)
# The same store with tags always read from storage (no memory tier for tags).
KILN2=$(start_kiln kiln2 --tag-cache-ttl 1ms)
echo "docker-registry: $REG   kiln cache-server: $KILN   storage: tmpfs"

# 200 cache entries (tags) in each, identical bytes.
python3 - "$REG" "$KILN" <<'PYEOF'
import hashlib, http.client, json, sys
def push(host, path, method, body=b"", headers=None):
    c = http.client.HTTPConnection(host); c.request(method, path, body, headers or {}); r = c.getresponse(); r.read()
    return r.status, dict(r.getheaders())
def blob(host, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    s, h = push(host, "/v2/bench/cache/blobs/uploads/", "POST")
    loc = h.get("Location") or h.get("location")
    sep = "&" if "?" in loc else "?"
    s, _ = push(host, loc.replace("http://" + host, "") + sep + "digest=" + d, "PUT", data, {"Content-Type": "application/octet-stream"})
    assert s == 201, (host, s)
    return d, len(data)
for host in sys.argv[1:]:
    cd, cs = blob(host, b'{"bench":true}')
    ld, ls = blob(host, b"layer" * 100)
    for i in range(200):
        m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}],
            "annotations": {"key": str(i)}}).encode()
        s, _ = push(host, "/v2/bench/cache/manifests/k%d" % i, "PUT", m, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert s == 201, (host, s)
PYEOF

cat > "$SHM/head.lua" <<'EOF'
wrk.method = "GET"
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
request = function() return wrk.format(nil, "/v2/bench/cache/manifests/k" .. math.random(0, 199)) end
EOF
keys=$(python3 -c 'import json; print(json.dumps({"repository":"bench/cache","keys":["k%d"%i for i in range(100)]}))')
cat > "$SHM/batch.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$keys'
EOF

# Prints "<req/s> <p50 ms> <p99 ms> <errors>".
lookup_run() {
  local out; out=$(wrk -t 2 -c 64 -d "${DUR}s" --latency -s "$2" "http://$1$3")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else printf "%.3f", v*1000 }'; }
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $non2xx"
}

if [ -z "${BLOBS_ONLY:-}" ]; then
echo
echo "manifest GET by tag (wrk mishandles HEAD with a Content-Length), 64 connections, ${DUR}s each, alternating (3 rounds, medians):"
: > "$SHM/r.reg"; : > "$SHM/r.kiln"; : > "$SHM/r.kiln2"
for round in 1 2 3; do
  lookup_run "$REG" "$SHM/head.lua" / >> "$SHM/r.reg"
  lookup_run "$KILN" "$SHM/head.lua" / >> "$SHM/r.kiln"
  lookup_run "$KILN2" "$SHM/head.lua" / >> "$SHM/r.kiln2"
done
for f in reg kiln kiln2; do
  bad=$(awk '{s+=$4} END {print s+0}' "$SHM/r.$f")
  [ "$bad" = 0 ] || { echo "$f answered $bad non-2xx lookups"; exit 1; }
done
med() { awk -v c="$1" '{print $c}' "$2" | median; }
R_RPS=$(med 1 "$SHM/r.reg"); K_RPS=$(med 1 "$SHM/r.kiln")
printf "  docker-registry: %8.0f lookups/s  p50 %6.3f ms  p99 %6.3f ms\n" "$R_RPS" "$(med 2 "$SHM/r.reg")" "$(med 3 "$SHM/r.reg")"
printf "  kiln:            %8.0f lookups/s  p50 %6.3f ms  p99 %6.3f ms\n" "$K_RPS" "$(med 2 "$SHM/r.kiln")" "$(med 3 "$SHM/r.kiln")"
K2_RPS=$(med 1 "$SHM/r.kiln2")
printf "  kiln, tags from storage every time: %8.0f lookups/s  p50 %6.3f ms  p99 %6.3f ms\n" "$K2_RPS" "$(med 2 "$SHM/r.kiln2")" "$(med 3 "$SHM/r.kiln2")"
printf "  ratio kiln/registry lookups/s: %.2f (target >= 3); without the tag memory tier: %.2f\n" \
  "$(echo "$K_RPS / $R_RPS" | bc -l)" "$(echo "$K2_RPS / $R_RPS" | bc -l)"

B=$(lookup_run "$KILN" "$SHM/batch.lua" /v2/_kiln/lookup)
printf "  kiln batch lookup (100 keys/request): %.0f requests/s = %.0f keys/s, p99 %s ms\n" \
  "$(cut -d' ' -f1 <<<"$B")" "$(echo "$(cut -d' ' -f1 <<<"$B") * 100" | bc -l)" "$(cut -d' ' -f3 <<<"$B")"
fi

echo
echo "blobs: a kiln cache server over S3 (moto) whose disk tier serves what it fetched once"
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
echo $! > "$SHM/moto.pid"
for _ in $(seq 100); do curl -s "http://127.0.0.1:$MOTO_PORT/" >/dev/null && break; sleep 0.2; done
export AWS_ENDPOINT="http://127.0.0.1:$MOTO_PORT" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=testing \
  AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT', region_name='us-east-1').create_bucket(Bucket='kiln')"
"$BIN" serve --listen 127.0.0.1:0 --storage "s3://kiln/cache" --data-dir "$SHM/kiln3-data" \
  --verbosity warn > "$SHM/kiln3.out" 2> "$SHM/kiln3.err" &
echo $! > "$SHM/kiln3.pid"
for _ in $(seq 100); do grep -q "listening on" "$SHM/kiln3.out" && break; sleep 0.1; done
KILN3=$(awk '{print $3}' "$SHM/kiln3.out")

put_blob() { # host file digest -> bytes/s
  local loc; loc=$(curl -sfi -X POST "http://$1/v2/bench/big/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
  case "$loc" in http*) ;; *) loc="http://$1$loc" ;; esac
  case "$loc" in *\?*) loc="$loc&digest=$3" ;; *) loc="$loc?digest=$3" ;; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$2" -o /dev/null -w '%{speed_upload}\n' "$loc"
}
get_blob() { curl -sf -o /dev/null -w '%{speed_download}\n' "http://$1/v2/bench/big/blobs/$2"; }
# Many GETs of a small blob over 4 connections for 5 s: bytes/s from wrk's request rate.
get_many() { # host digest size -> bytes/s
  local out; out=$(wrk -t 2 -c 4 -d 5s "http://$1/v2/bench/big/blobs/$2")
  grep -q "Non-2xx" <<<"$out" && { echo "non-2xx answers from $1" >&2; exit 1; }
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") * $3" | bc -l
}
mb() { echo "$(median < "$1") / 1000000" | bc -l; }
ratio() { echo "$(mb "$1") / $(mb "$2")" | bc -l; }
for size in 4 256; do
  head -c $((size << 20)) /dev/urandom > "$SHM/blob$size"
  D="sha256:$(sha256sum "$SHM/blob$size" | cut -d' ' -f1)"
  : > "$SHM/put.reg"; : > "$SHM/put.kiln"; : > "$SHM/get.reg"; : > "$SHM/get.kiln"; : > "$SHM/get.kiln3"
  put_blob "$KILN3" "$SHM/blob$size" "$D" >/dev/null
  get_blob "$KILN3" "$D" >/dev/null   # the disk tier fetches it from S3 once
  if [ "$size" = 256 ]; then
    for i in 1 2 3 4 5; do
      put_blob "$REG" "$SHM/blob$size" "$D" >> "$SHM/put.reg"; put_blob "$KILN" "$SHM/blob$size" "$D" >> "$SHM/put.kiln"
    done
    for i in 1 2 3 4 5; do
      get_blob "$REG" "$D" >> "$SHM/get.reg"; get_blob "$KILN" "$D" >> "$SHM/get.kiln"; get_blob "$KILN3" "$D" >> "$SHM/get.kiln3"
    done
    echo "blob of 256 MiB, one GET or PUT (monolithic) at a time, alternating, medians of 5 (MB/s):"
  else
    put_blob "$REG" "$SHM/blob$size" "$D" >/dev/null; put_blob "$KILN" "$SHM/blob$size" "$D" >/dev/null
    for i in 1 2 3; do
      get_many "$REG" "$D" $((size << 20)) >> "$SHM/get.reg"; get_many "$KILN" "$D" $((size << 20)) >> "$SHM/get.kiln"
      get_many "$KILN3" "$D" $((size << 20)) >> "$SHM/get.kiln3"
    done
    echo "blob of 4 MiB, GETs over 4 connections for 5 s (wrk), alternating, medians of 3 (MB/s):"
  fi
  printf "  GET  docker-registry %7.0f  kiln (file store) %7.0f  ratio %.2f  kiln (S3, disk tier) %7.0f  ratio %.2f\n" \
    "$(mb "$SHM/get.reg")" "$(mb "$SHM/get.kiln")" "$(ratio "$SHM/get.kiln" "$SHM/get.reg")" \
    "$(mb "$SHM/get.kiln3")" "$(ratio "$SHM/get.kiln3" "$SHM/get.reg")"
  if [ "$size" = 256 ]; then
    printf "  PUT  docker-registry %7.0f  kiln %7.0f  ratio %.2f\n" "$(mb "$SHM/put.reg")" "$(mb "$SHM/put.kiln")" "$(ratio "$SHM/put.kiln" "$SHM/put.reg")"
  fi
done
