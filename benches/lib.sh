# Shared by the comparison scripts: a docker-registry on a free loopback port
# with its storage on tmpfs, and timing helpers. Source it after setting SHM.

start_registry() { # sets REG (host:port) and REG_PID
  cat > "$SHM/registry.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $SHM/registry}}
http: {addr: 127.0.0.1:0}
EOF
  docker-registry serve "$SHM/registry.yml" > "$SHM/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$SHM/registry.log" && break; sleep 0.1; done
  REG=$(grep -o 'listening on [0-9.:]*' "$SHM/registry.log" | awk '{print $3}')
  [ -n "$REG" ] || { cat "$SHM/registry.log"; exit 1; }
}

now() { date +%s.%N; }

# Each timed run starts on a quiet machine: dirty pages (a cargo build just
# before, on the slow disk) are written back first, else the kernel's
# writeback takes a core in the middle of a run (measured: 2.7 s of CPU
# during one 1.6 s build); then both cores must be idle.
settle() { # sync, then wait (at most 10 s) until both cores were >= 90% idle for 0.5 s
  local i a b
  sync
  for i in $(seq 20); do
    a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
    local idle=$(( b[4] - a[4] )) total=0 k
    for k in 1 2 3 4 5 6 7 8; do total=$(( total + b[k] - a[k] )); done
    [ "$total" -gt 0 ] && [ $(( idle * 100 / total )) -ge 90 ] && return 0
  done
}
# The median of numbers given one per line or separated by spaces.
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Base images: busybox-static plus N small files ("text", the default) or N
# files of 10.5 KB, half text and half random ("mixed": an ordinary
# distribution's compressibility), pushed with umoci + skopeo. With
# KEEP_TAR=path the root is also left there as an uncompressed tar.
make_base() { # name files [text|mixed]
  local name=$1 files=$2 kind=${3:-text} dir="$SHM/base-$1"
  mkdir -p "$dir/rootfs/bin" "$dir/rootfs/etc" "$dir/rootfs/tmp"
  cp /bin/busybox "$dir/rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$dir/rootfs/etc/passwd"
  printf 'root:x:0:\n' > "$dir/rootfs/etc/group"
  python3 - "$dir/rootfs/usr/share/data" "$files" "$kind" <<'PY'
import os, random, sys
root, n, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rnd = random.Random(16)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
for i in range(n):
    d = os.path.join(root, f"d{i % 200}", f"e{i % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        if kind == "text":
            f.write(f"file {i}\n".encode())
        elif i % 2:
            f.write(os.urandom(10500))
        else:
            f.write(b" ".join(rnd.choice(words) for _ in range(1800))[:10500])
PY
  umoci init --layout "$dir/layout" >/dev/null
  umoci new --image "$dir/layout:b" >/dev/null
  umoci unpack --image "$dir/layout:b" "$dir/bundle" >/dev/null
  cp -a "$dir/rootfs/." "$dir/bundle/rootfs/"
  umoci repack --image "$dir/layout:b" "$dir/bundle" >/dev/null
  umoci config --image "$dir/layout:b" --config.env PATH=/bin >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$dir/layout:b" "docker://$REG/$name:latest"
  if [ -n "${KEEP_TAR:-}" ]; then tar -C "$dir/rootfs" -cf "$KEEP_TAR" .; fi
  rm -rf "$dir"
}

# A ~60 MB base, busybox and 60 MB of random data (incompressible: what a
# pull moves), as the OCI layout "$1/layout:base" (its bundle in "$1/bundle").
random_base() { # dir
  local B=$1
  mkdir -p "$B/rootfs/bin"
  cp /bin/busybox "$B/rootfs/bin/"
  head -c 60000000 /dev/urandom > "$B/rootfs/data.bin"
  umoci init --layout "$B/layout" >/dev/null
  umoci new --image "$B/layout:base" >/dev/null
  umoci unpack --image "$B/layout:base" "$B/bundle" >/dev/null
  cp -a "$B/rootfs/." "$B/bundle/rootfs/"
  umoci repack --image "$B/layout:base" "$B/bundle" >/dev/null
}

# Timed builds shared by the BuildKit comparisons (they need SHM, EXE and,
# for BuildKit, a daemon on $SHM/d.sock with DOCKER=(docker -H …)).
kiln_timed() { # context destination cache-repo [flags] -> seconds; a fresh work dir (a new runner); report in $SHM/report.json
  local ctx=$1 dest=$2 repo=$3 w="$SHM/kiln-work" t0 t1
  shift 3
  rm -rf "$w"; mkdir -p "$w"
  settle
  t0=$(now)
  KILN_DIR="$w" "$EXE" --context "$ctx" --destination "$dest" --insecure --insecure-pull \
    --cache --cache-repo "$repo" --kaniko-dir "$w" --report "$SHM/report.json" "$@" >"$SHM/kiln.log" 2>&1 \
    || { cat "$SHM/kiln.log" >&2; exit 1; }
  t1=$(now); echo "$t1 - $t0" | bc
}
buildkit_timed() { # context image prune(yes|no) -> seconds; inline cache from the registry, then a push
  local ctx=$1 img=$2 t0 t1 q
  if [ "$3" = yes ]; then "${DOCKER[@]}" system prune -af >/dev/null; "${DOCKER[@]}" builder prune -af >/dev/null; fi
  q="version=2&networkmode=host&t=$img&cachefrom=%5B%22$img%22%5D&buildargs=%7B%22BUILDKIT_INLINE_CACHE%22%3A%221%22%7D"
  settle
  t0=$(now)
  tar -C "$ctx" -cf - . | curl -sS --unix-socket "$SHM/d.sock" -X POST -H "Content-Type: application/x-tar" \
    --data-binary @- "http://localhost/v1.41/build?$q" > "$SHM/bk.log"
  if grep -q '"error' "$SHM/bk.log"; then cat "$SHM/bk.log" >&2; exit 1; fi
  "${DOCKER[@]}" push -q "$img" >/dev/null
  t1=$(now); echo "$t1 - $t0" | bc
}
