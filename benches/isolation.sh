#!/usr/bin/env bash
# RUN step cost per isolation rung: RUNs that each change one file on a
# 20,000- and a 100,000-file root (RUN step seconds from --report, base
# unpack excluded): the stage's first RUN (which indexes the root once on
# the rungs without an overlay) and the median of the four after it.
# Each scan-based rung runs twice: following inotify's events (the default)
# and with --snapshot-mode=full (a whole-root walk before and after every
# RUN, as all RUNs did before). namespaces and chroot run on this machine;
# in-place only ever runs inside a container, here one started by a private
# Docker Engine (data on tmpfs) with its default capabilities. Rungs and
# sizes alternate.
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
make_base base20k 20000
make_base base100k 100000
mkdir -p "$SHM/ctx"
for size in 20k 100k; do
  {
    printf 'FROM %s/base%s:latest\n' "$REG" "$size"
    for i in 1 2 3 4 5; do printf 'RUN echo changed > /one-file-%s\n' "$i"; done
  } > "$SHM/ctx/Dockerfile.$size"
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

# The first RUN's seconds, and the median of the others'.
run_steps() { python3 -c '
import json, statistics, sys
r = json.load(open(sys.argv[1]))
s = [x["seconds"] for x in r["steps"] if x["instruction"].startswith("RUN")]
open(sys.argv[2], "a").write(f"{s[0]}\n")
open(sys.argv[3], "a").write(f"{statistics.median(s[1:])}\n")' "$1" "$2-first" "$2-later"; }
CONFIGS="${CONFIGS:-namespaces chroot chroot-full in-place in-place-full}"
flags() { case "$1" in *-full) echo "--isolation ${1%-full} --snapshot-mode=full" ;; *) echo "--isolation $1" ;; esac; }
for _ in $(seq "$RUNS"); do
  for size in 20k 100k; do
    for c in $CONFIGS; do
      case "$c" in
        in-place*)
          $DOCKER exec kiln-bench /kiln/executor --context /ctx --dockerfile "/ctx/Dockerfile.$size" --no-push --insecure-pull \
            --kaniko-dir /kiln/work $(flags "$c") --report /ctx/report.json >"$SHM/kiln.log" 2>&1 || { cat "$SHM/kiln.log"; exit 1; }
          run_steps "$SHM/ctx/report.json" "$SHM/$c-$size" ;;
        *)
          rm -rf "$SHM/work"; mkdir -p "$SHM/work"
          "$EXE" --context "$SHM/ctx" --dockerfile "$SHM/ctx/Dockerfile.$size" --no-push --insecure-pull \
            --kaniko-dir "$SHM/work" $(flags "$c") --report "$SHM/report.json" >"$SHM/kiln.log" 2>&1 || { cat "$SHM/kiln.log"; exit 1; }
          run_steps "$SHM/report.json" "$SHM/$c-$size" ;;
      esac
    done
  done
done
echo "RUN that changes one file, median of $RUNS builds (ms): config, 20k first, 20k later, 100k first, 100k later, later 100k/20k"
for c in $CONFIGS; do
  A=$(median < "$SHM/$c-20k-first"); B=$(median < "$SHM/$c-20k-later")
  C=$(median < "$SHM/$c-100k-first"); D=$(median < "$SHM/$c-100k-later")
  printf '  %-14s %8.1f %8.1f %8.1f %8.1f  %.2f\n' "$c" "$(echo "$A*1000" | bc -l)" "$(echo "$B*1000" | bc -l)" \
    "$(echo "$C*1000" | bc -l)" "$(echo "$D*1000" | bc -l)" "$(echo "$D / $B" | bc -l)"
done
