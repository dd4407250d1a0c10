#!/usr/bin/env bash
# RUN step cost per isolation rung: a RUN that changes one file on a
# 10,000- and a 100,000-file root (RUN step seconds from --report, base
# unpack excluded). namespaces and chroot run on this machine; in-place only
# ever runs inside a container, here one started by a private Docker Engine
# (data on tmpfs) with its default capabilities. Rungs and sizes alternate.
#
#   bash benches/isolation.sh [runs]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
bash .ci/setup >/dev/null
cargo build --release -q -p kiln-executor --bin executor
EXE="$PWD/target/release/executor"
SHM=$(mktemp -d /dev/shm/kiln-iso.XXXXXX)
DOCKER="/usr/bin/docker"
export DOCKER_HOST="unix://$SHM/d.sock"
cleanup() {
  $DOCKER rm -f kiln-bench >/dev/null 2>&1 || true
  [ -n "${DOCKERD_PID:-}" ] && kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null
  kill "${REG_PID:-}" 2>/dev/null || true
  # dockerd leaves its netns mount behind.
  awk '{print $5}' /proc/self/mountinfo | grep "^$SHM" | sort -r | xargs -r -n1 umount -l
  rm -rf "$SHM"
}
trap cleanup EXIT
. benches/lib.sh
start_registry
echo "preparing bases on $REG ..."
make_base base10k 10000
make_base base100k 100000
mkdir -p "$SHM/ctx"
for size in 10k 100k; do
  printf 'FROM %s/base%s:latest\nRUN echo changed > /one-file\n' "$REG" "$size" > "$SHM/ctx/Dockerfile.$size"
done

dockerd --data-root "$SHM/dd" --exec-root "$SHM/de" --pidfile "$SHM/d.pid" -H "$DOCKER_HOST" \
  --bridge=none --iptables=false --ip-masq=false > "$SHM/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 100); do $DOCKER version >/dev/null 2>&1 && break; sleep 0.2; done
IMG="$SHM/img"
mkdir -p "$IMG/bin" "$IMG/kiln" "$IMG/etc/ssl/certs"
cp /bin/busybox "$IMG/bin/"
for a in sh sleep cat; do ln -sf busybox "$IMG/bin/$a"; done
cp "$EXE" "$IMG/kiln/executor"
cp /etc/ssl/certs/ca-certificates.crt "$IMG/etc/ssl/certs/"
# The executor and its libraries under /kiln: the in-place rung moves the
# container's own /lib aside and refuses a binary that needs it.
mkdir -p "$IMG/kiln/lib"
for lib in $(ldd "$EXE" | grep -o '/[^ ]*'); do cp "$lib" "$IMG/kiln/lib/"; done
patchelf --set-interpreter "/kiln/lib/$(basename "$(ldd "$EXE" | grep -o '/[^ ]*ld-linux[^ ]*')")" --set-rpath /kiln/lib "$IMG/kiln/executor"
tar -C "$IMG" -c . | $DOCKER import -c 'ENV PATH=/bin:/kiln' - kiln-bench:1 >/dev/null
$DOCKER run -d --name kiln-bench --network host -v "$SHM/ctx:/ctx" --tmpfs /kiln/work:exec kiln-bench:1 sleep 3600 >/dev/null

run_step() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print([s for s in r["steps"] if s["instruction"].startswith("RUN")][0]["seconds"])' "$1"; }
for _ in $(seq "$RUNS"); do
  for size in 10k 100k; do
    for rung in namespaces chroot; do
      rm -rf "$SHM/work"; mkdir -p "$SHM/work"
      "$EXE" --context "$SHM/ctx" --dockerfile "$SHM/ctx/Dockerfile.$size" --no-push --insecure-pull \
        --kaniko-dir "$SHM/work" --isolation "$rung" --report "$SHM/report.json" >"$SHM/kiln.log" 2>&1 || { cat "$SHM/kiln.log"; exit 1; }
      run_step "$SHM/report.json" >> "$SHM/$rung-$size"
    done
    $DOCKER exec kiln-bench /kiln/executor --context /ctx --dockerfile "/ctx/Dockerfile.$size" --no-push --insecure-pull \
      --kaniko-dir /kiln/work --isolation in-place --report /ctx/report.json >"$SHM/kiln.log" 2>&1 || { cat "$SHM/kiln.log"; exit 1; }
    run_step "$SHM/ctx/report.json" >> "$SHM/in-place-$size"
  done
done
echo "RUN that changes one file, median of $RUNS (seconds): rung, 10k root, 100k root, ratio"
for rung in namespaces in-place chroot; do
  A=$(median < "$SHM/$rung-10k"); B=$(median < "$SHM/$rung-100k")
  printf '  %-10s %.4f  %.4f  %.2f\n' "$rung" "$A" "$B" "$(echo "$B / $A" | bc -l)"
done
