#!/usr/bin/env bash
# The main job on an embedded default: no internet, no cloud account, no
# registry. Builds an example image whose base is made locally from
# busybox-static, writes it as an OCI layout, and checks it with tools no one
# here wrote (oci-image-tool, umoci). Then starts the shared cache server on
# local disk (file://) and builds twice through it: the second build is
# served entirely from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
cargo build --release -p kiln-executor --bin executor -p kiln-cache-server --bin cache-server
out="${KILN_DEMO_OUT:-$(mktemp -d /tmp/kiln-demo.XXXXXX)}"
ctx="$out/context"
mkdir -p "$ctx/app"
cp /bin/busybox "$ctx/busybox"
cp deploy/example/Dockerfile "$ctx/Dockerfile"
cp deploy/example/app/* "$ctx/app/"
./target/release/executor \
  --context "$ctx" \
  --dockerfile Dockerfile \
  --destination kiln.local/example:demo \
  --no-push \
  --oci-layout-path "$out/oci" \
  --tar-path "$out/example.tar" \
  --digest-file "$out/digest" \
  --kaniko-dir "$out/work"
oci-image-tool validate --type image "$out/oci"
umoci unpack --image "$out/oci:demo" "$out/bundle" >/dev/null
echo
echo "image digest: $(cat "$out/digest")"
echo "OCI layout:   $out/oci (tag demo)"
echo "docker tar:   $out/example.tar"
echo "running its command with its environment on the unpacked root (chroot):"
mapfile -t envs < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["process"]["env"]))' "$out/bundle/config.json")
env -i "${envs[@]}" chroot "$out/bundle/rootfs" /bin/sh /app/hello.sh

echo
echo "the shared layer cache: cache-server on local disk, two builds through it"
./target/release/cache-server serve --listen 127.0.0.1:0 --storage "file://$out/cache" \
  --verbosity warn > "$out/cache-server.out" 2> "$out/cache-server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out/cache-server.out" && break; sleep 0.1; done
addr=$(awk '{print $3}' "$out/cache-server.out")
for run in 1 2; do
  ./target/release/executor --context "$ctx" --dockerfile Dockerfile --no-push \
    --cache --cache-repo "$addr/example/cache" --insecure-registry "$addr" \
    --kaniko-dir "$out/work-$run" --report "$out/report-$run.json" 2> "$out/build-$run.log"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  build %s: %d hits, %d misses, %.2fs" % (sys.argv[2], r["cache_hits"], r["cache_misses"], r["seconds"]))' "$out/report-$run.json" "$run"
done
echo "  server metrics:"
curl -sf "http://$addr/metrics" | grep -E '^kiln_cache_(lookups_total|build_steps_total)' | sed 's/^/    /'
