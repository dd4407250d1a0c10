#!/usr/bin/env bash
# The main job on an embedded default: no internet, no cloud account, no
# registry. Builds an example image whose base is made locally from
# busybox-static, writes it as an OCI layout, and checks it with tools no one
# here wrote (oci-image-tool, umoci).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
cargo build --release -p kiln-executor --bin executor
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
